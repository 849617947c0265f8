"""A ledger that stops taking rows mid-run (a full disk): the run stops with an
error naming the file, and nothing recorded before is lost or re-asked."""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path

import pytest

import pipeline.qa.stage
from pipeline.errors import LedgerError
from pipeline.store.ledger import LedgerWriter
from pipeline.qa.stage import run_qa
from tests.fakes.huixiangdou_server import FakeHuixiangdou
from tests.fakes.llm_server import FakeLLM
from tests.test_qa import asked, conversations, llm, make_settings, rows, servers  # noqa: F401
from tests.fakes.loops import BOTH_LOOPS

pytestmark = BOTH_LOOPS


def _full_after(answers: int) -> object:
    """A write seam: the answer ledger takes ``answers`` rows, then the disk is full."""
    left = [answers]

    def write(fd: int, data: memoryview) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("answers.jsonl"):
            if left[0] <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= 1
        return os.write(fd, data)

    return write


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names descriptors through /proc")
async def test_a_full_disk_stops_the_run_naming_the_ledger_and_keeps_what_was_recorded(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    settings = make_settings(tmp_path, llm, servers)
    monkeypatch.setattr(pipeline.qa.stage, "LedgerWriter", functools.partial(LedgerWriter, write_fn=_full_after(5)))
    with pytest.raises(LedgerError, match=r"answers\.jsonl: No space left on device"):
        await run_qa(settings, install_signals=False)
    kept = rows(settings, "answers")
    assert len(kept) == 5

    monkeypatch.undo()
    before = asked(servers)
    result = await run_qa(settings, install_signals=False)
    assert result.status == "complete"
    again = {q for q in before if asked(servers)[q] > before[q]}
    assert not again & {r["question"] for r in kept}, "no recorded answer is asked again"
    assert len(conversations(settings)) == 12
