"""Errors a person can act on: ``python run.py qa`` against misconfigured or
missing services, a locked output folder and a full disk prints one
``error: ...`` naming what to fix, no traceback, and exits 1.

The CLI runs in-process (``run.main``) on its own event loop; the fake
services run on 127.0.0.1 in a thread with theirs."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

import run
from pipeline.store.ledger import RunLock
from tests.fakes.huixiangdou_server import FakeHuixiangdou
from tests.fakes.llm_fixtures import FAKE_KEY, FAKE_KEY_ENV
from tests.fakes.llm_server import FakeLLM

T = TypeVar("T", FakeLLM, FakeHuixiangdou)


@contextmanager
def serving(make: Callable[[], T]) -> Iterator[T]:
    """Run a fake service on its own loop in a thread for the duration."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
        async def wrapped() -> Any:
            return await coro_fn()
        return asyncio.run_coroutine_threadsafe(wrapped(), loop).result(timeout=10)

    async def start() -> T:
        fake = make()
        await fake.start()
        return fake

    fake = call(start)
    try:
        yield fake
    finally:
        call(fake.stop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_settings(tmp_path: Path, llm_url: str, hxd_url: str, model: str = "fake-model") -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(
        f'[paths]\ndata_dir = "{tmp_path / "data"}"\nout_dir = "{tmp_path / "out"}"\n'
        f'[llm]\nbase_url = "{llm_url}"\nmodel = "{model}"\napi_key_env = "{FAKE_KEY_ENV}"\n'
        "timeout_s = 5\nmax_retries = 0\nrpm = 100000\ntpm = 100000000\n"
        f'[huixiangdou]\nurls = ["{hxd_url}"]\ntimeout_s = 5\n'
        '[questions]\naspects = ["战斗系统"]\nper_aspect = 2\nbatch_size = 2\n'
        "[run]\ngrace_s = 2\n"
        # These tests are about HuixiangDou's own errors: no fallback to the local backend.
        '[rag]\nbackend = "huixiangdou"\n',
        encoding="utf-8",
    )
    return path


def qa(settings_file: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run.main(["--settings", str(settings_file), "qa"])
    err = capsys.readouterr().err
    return code, err


def assert_clean(err: str) -> str:
    """Exactly one error line and no traceback; returns it."""
    assert "Traceback" not in err
    assert FAKE_KEY not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAKE_KEY_ENV, FAKE_KEY)


@pytest.fixture
def hxd() -> Iterator[FakeHuixiangdou]:
    with serving(lambda: FakeHuixiangdou(seed=1)) as fake:
        yield fake


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with serving(lambda: FakeLLM(api_key=FAKE_KEY, models=("fake-model",))) as fake:
        yield fake


def test_llm_unreachable_names_the_url(
    tmp_path: Path, key: None, hxd: FakeHuixiangdou, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, err = qa(write_settings(tmp_path, url, hxd.url), capsys)
    line = assert_clean(err)
    assert code == 1
    assert url in line and "base_url" in line
    assert hxd.requests == 0


def test_wrong_key_names_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llm: FakeLLM, hxd: FakeHuixiangdou,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(FAKE_KEY_ENV, "sk-wrong-key-0000")
    code, err = qa(write_settings(tmp_path, llm.base_url, hxd.url), capsys)
    line = assert_clean(err)
    assert code == 1
    assert "401" in line and f"${FAKE_KEY_ENV}" in line
    assert "sk-wrong-key-0000" not in err


def test_unknown_model_lists_what_is_offered(
    tmp_path: Path, key: None, llm: FakeLLM, hxd: FakeHuixiangdou, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = qa(write_settings(tmp_path, llm.base_url, hxd.url, model="no-such-model"), capsys)
    line = assert_clean(err)
    assert code == 1
    assert "'no-such-model'" in line and "[llm] model" in line and "fake-model" in line


def test_huixiangdou_not_running_names_the_urls_and_the_start_command(
    tmp_path: Path, key: None, llm: FakeLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, err = qa(write_settings(tmp_path, llm.base_url, url), capsys)
    line = assert_clean(err)
    assert code == 1
    assert url in line and "python3 -m huixiangdou.server" in line
    assert llm.served == 0, "nothing paid for"


def test_locked_out_dir_names_the_holder_pid(
    tmp_path: Path, key: None, llm: FakeLLM, hxd: FakeHuixiangdou, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_settings(tmp_path, llm.base_url, hxd.url)
    with RunLock(tmp_path / "out"):
        code, err = qa(cfg, capsys)
    line = assert_clean(err)
    assert code == 1
    assert f"pid {os.getpid()}" in line and "in use by another run" in line
    assert llm.served == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fake a full disk")
def test_disk_full_names_the_ledger_and_says_what_is_kept(
    tmp_path: Path, key: None, llm: FakeLLM, hxd: FakeHuixiangdou, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_settings(tmp_path, llm.base_url, hxd.url)
    state = tmp_path / "out" / "state"
    state.mkdir(parents=True)
    # Every write to /dev/full fails with ENOSPC: the first answer cannot be recorded.
    (state / "answers.jsonl").symlink_to("/dev/full")
    code, err = qa(cfg, capsys)
    line = assert_clean(err)
    assert code == 1
    assert str(state / "answers.jsonl") in line and "No space left on device" in line
    assert "kept in the ledgers" in line and "run the same command again" in line
    assert (state / "questions.jsonl").read_bytes().count(b"\n") == 2, "the questions stayed recorded"
    assert "qa stopped: " in (tmp_path / "out" / "qa.log").read_text("utf-8"), "the log names the error"


def test_a_run_logs_to_qa_log(
    tmp_path: Path, key: None, llm: FakeLLM, hxd: FakeHuixiangdou, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = qa(write_settings(tmp_path, llm.base_url, hxd.url), capsys)
    assert code == 0 and "Traceback" not in err
    log = (tmp_path / "out" / "qa.log").read_text("utf-8")
    assert "HuixiangDou servers up" in log
    assert "qa complete; questions 2/2" in log
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "report.json").exists()
    assert FAKE_KEY not in log


def test_qa_retry_names_the_kinds_it_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run.main(["qa", "--retry", "skipped,answred"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "answred: --retry takes answer kinds" in err and "skipped, vetoed" in err
