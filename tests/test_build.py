"""`python run.py build`: the dataset and the report from the ledgers alone, and a
run that counts as complete only once its dataset is in place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

import run
from pipeline.errors import OutputError
from pipeline.jsonl import dumps_line
from pipeline.qa import stage
from pipeline.qa.stage import run_qa
from pipeline.store.ledger import RunLock
from tests.fakes.huixiangdou_server import FakeHuixiangdou
from tests.fakes.llm_server import FakeLLM
from tests.test_qa import llm, make_settings, rows, servers  # noqa: F401
from tests.fakes.loops import BOTH_LOOPS

pytestmark = BOTH_LOOPS


def write_settings(tmp_path: Path, **conversations: Any) -> Path:
    path = tmp_path / "my settings.toml"
    extra = "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in conversations.items())
    path.write_text(f'[paths]\nout_dir = "{tmp_path / "out"}"\n[llm]\napi_key_env = "NO_SUCH_KEY_ANYWHERE"\n'
                    f'[questions]\naspects = ["战斗", "剧情"]\nper_aspect = 1\n'
                    f'[conversations]\nsystem_prompt = "系统。"\n{extra}', encoding="utf-8")
    return path


def ledger(tmp_path: Path, name: str, lines: list[dict[str, Any]]) -> Path:
    path = tmp_path / "out" / "state" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(map(dumps_line, lines)))
    return path


def answer(conv: str, turn: int, text: str) -> dict[str, Any]:
    return {"conv": conv, "turn": turn, "kind": "answered", "question": f"{conv}-{turn}？", "answer": text,
            "state": "success", "reason": "", "seconds": 0.5}


QUESTIONS = [{"id": "00000000000000a1", "aspect": "战斗", "text": "a1-1？", "seq": 0},
             {"id": "00000000000000b2", "aspect": "剧情", "text": "b2-1？", "seq": 1},
             {"id": "00000000000000c3", "aspect": "旧方面", "text": "c3-1？", "seq": 2}]
ANSWERS = [answer("00000000000000a1", 1, "答一"), answer("00000000000000a1", 2, "答二"),
           answer("00000000000000b2", 1, "答三"), answer("00000000000000c3", 1, "答四")]
START = {"event": "run_start", "pid": 1, "time": 1_700_000_000.0}


def test_build_needs_no_service_and_no_key_and_follows_the_current_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_ANYWHERE", raising=False)
    cfg = write_settings(tmp_path, max_turns=1)
    ledger(tmp_path, "questions", QUESTIONS)
    ledger(tmp_path, "answers", ANSWERS)
    events = ledger(tmp_path, "events", [START])  # the run died before recording its end
    out = tmp_path / "out"
    stale = [out / ".conversations.jsonl.k2j3h4.tmp", out / ".report.json.abc123.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
        os.utime(p, (1_700_000_000.0, 1_700_000_000.0))  # left by a write killed long ago
    others = out / ".notes.txt.x.tmp"
    others.write_bytes(b"not ours")

    assert run.main(["--settings", str(cfg), "status"]) == 0
    status = capsys.readouterr().out
    assert "last run: crashed" in status
    assert f"to rebuild it: python run.py --settings '{cfg}' build" in status

    assert run.main(["--settings", str(cfg), "build"]) == 0

    line = capsys.readouterr().out
    assert line.startswith("build: conversations.jsonl 2 conversations")
    assert "aspect 旧方面 1" in line and "cut to 1 turn 1" in line and "removed 2 leftover" in line
    records = [orjson.loads(x) for x in (out / "conversations.jsonl").read_bytes().splitlines()]
    assert records == [
        {"conversation": [{"system": "系统。", "input": "00000000000000a1-1？", "output": "答一"}]},
        {"conversation": [{"system": "系统。", "input": "00000000000000b2-1？", "output": "答三"}]},
    ]
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["conversations"]["in_dataset"] == 2
    assert report["conversations"]["left_out"] == {"aspect 旧方面": 1, "cut to 1 turn": 1}
    assert "aspect 旧方面 1, cut to 1 turn 1" in (out / "report.md").read_text(encoding="utf-8")
    assert not any(p.exists() for p in stale) and others.exists()
    assert orjson.loads(events.read_bytes().splitlines()[-1])["event"] == "build"

    assert run.main(["--settings", str(cfg), "status"]) == 0
    status = capsys.readouterr().out
    assert "conversations.jsonl rebuilt by `build`" in status and ": 2 conversations" in status
    assert "rebuild it" not in status


def test_build_respects_the_run_lock_and_needs_ledgers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_settings(tmp_path)
    assert run.main(["--settings", str(cfg), "build"]) == 2
    assert "no ledgers to build from" in capsys.readouterr().err
    ledger(tmp_path, "questions", QUESTIONS)
    with RunLock(tmp_path / "out"):
        assert run.main(["--settings", str(cfg), "build"]) == 1
    assert "in use by another run" in capsys.readouterr().err
    assert not (tmp_path / "out" / "conversations.jsonl").exists()


async def test_a_run_records_its_end_only_once_its_dataset_is_in_place(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    settings = make_settings(tmp_path, llm, servers, questions={"per_aspect": 2})
    seen: list[list[str]] = []
    real = stage.write_dataset_with_sources

    def watching(path: Path, records: Any) -> int:
        # What a SIGKILL during the final write would leave in the event ledger.
        seen.append([e["event"] for e in rows(settings, "events")])
        return real(path, records)

    monkeypatch.setattr(stage, "write_dataset_with_sources", watching)
    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    assert seen and "run_end" not in seen[0] and "run_start" in seen[0]
    end = rows(settings, "events")[-1]
    assert end["event"] == "run_end" and end["status"] == "complete"
    assert end["conversations"] == result.conversations > 0


async def test_a_dataset_that_cannot_be_written_makes_the_run_not_complete(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    settings = make_settings(tmp_path, llm, servers, questions={"per_aspect": 1})

    def full(path: Path, records: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stage, "write_dataset_with_sources", full)
    with pytest.raises(OutputError, match="python run.py --settings test build"):
        await run_qa(settings, install_signals=False)
    end = rows(settings, "events")[-1]
    assert end["event"] == "run_end" and end["status"] == "fatal"
    assert "conversations.jsonl not rebuilt" in end["detail"] and end["conversations"] is None
