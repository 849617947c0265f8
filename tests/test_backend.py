"""``[rag] backend``: auto answers with HuixiangDou when a server is up (busy
counts as up) and with the local backend otherwise; a resume keeps to the
backend that made the answers already recorded; every row records its backend."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from pipeline.outputs.report import REPORT_JSON
from pipeline.qa.stage import earlier_backend, load_state, run_qa
from pipeline.services.backend import choose_backend, open_answerer, reachable_servers
from pipeline.services.huixiangdou import HuixiangdouPool
from pipeline.services.llm import LLMClient
from pipeline.services.local_rag import LocalAnswerer
from pipeline.settings import Settings, parse_settings
from tests.fakes.huixiangdou_server import FakeHuixiangdou
from tests.fakes.llm_fixtures import FAKE_KEY, FAKE_KEY_ENV
from tests.fakes.llm_server import FakeLLM
from tests.test_local_rag import FACTS as ALL_FACTS
from tests.test_local_rag import grounded_responder, write_corpus

# A zh run screens out the English question about the English file (wrong_language).
FACTS = {q: fact for q, fact in ALL_FACTS.items() if not q.isascii()}

URL = "http://127.0.0.1:23333"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(("configured", "earlier", "up", "backend", "says"), [
    ("auto", None, [URL], "huixiangdou", f"HuixiangDou is up at {URL}"),
    ("auto", None, [], "local", f"no HuixiangDou server at {URL}; answering from data"),
    # A resume keeps to what made the rows, whatever is up now.
    ("auto", "huixiangdou", None, "huixiangdou", 'set [rag] backend = "local"'),
    ("auto", "local", None, "local", 'set [rag] backend = "huixiangdou"'),
    # An explicit choice is obeyed, and a mix is said.
    ("huixiangdou", None, None, "huixiangdou", '[rag] backend = "huixiangdou"'),
    ("local", "huixiangdou", None, "local", "mixes both backends"),
    ("huixiangdou", "local", None, "huixiangdou", "mixes both backends"),
])
def test_choose_backend(configured: str, earlier: Any, up: Any, backend: str, says: str) -> None:
    choice = choose_backend(configured, earlier=earlier, up=up, urls=[URL], data_dir="data")
    assert choice.backend == backend
    assert says in choice.reason
    assert choice.line().startswith(f"rag backend: {backend} (")


def test_an_explicit_choice_matching_the_earlier_rows_says_no_mix() -> None:
    choice = choose_backend("local", earlier="local", up=None, urls=[URL], data_dir="data")
    assert "mixes" not in choice.reason


async def test_reachable_servers_tells_a_listening_port_from_a_closed_one() -> None:
    async with FakeHuixiangdou() as fake:
        closed = f"http://127.0.0.1:{_free_port()}"
        assert await reachable_servers([closed, fake.url]) == [fake.url]


# --------------------------------------------------------------------------- runs


def responder(messages: list[dict[str, str]]) -> str:
    text = messages[-1]["content"]
    if "个不同的问题" in text:
        return orjson.dumps(list(FACTS)).decode()
    return grounded_responder(messages)


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",), responder=responder) as fake:
        yield fake


def make_settings(tmp_path: Path, llm: FakeLLM, urls: list[str], **rag: Any) -> Settings:
    return parse_settings(_settings_dict(tmp_path, llm, urls, **rag), source="test",
                          environ={FAKE_KEY_ENV: FAKE_KEY})


def _settings_dict(tmp_path: Path, llm: FakeLLM, urls: list[str], **rag: Any) -> dict[str, Any]:
    data = tmp_path / "data"
    if not data.exists():
        write_corpus(data)
    return (
        {
            "paths": {"data_dir": str(data), "out_dir": str(tmp_path / "out")},
            "llm": {"base_url": llm.base_url, "model": "fake-model", "api_key_env": FAKE_KEY_ENV,
                    "max_retries": 0},
            "huixiangdou": {"urls": urls, "timeout_s": 10.0, "max_retries": 0},
            "questions": {"aspects": ["游戏概述"], "per_aspect": len(FACTS), "batch_size": len(FACTS),
                          "max_chars": 80},
            "conversations": {"min_answer_chars": 2},
            "rag": rag,
        }
    )


def rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_auto_with_no_server_answers_locally_and_records_it(
    tmp_path: Path, llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"http://127.0.0.1:{_free_port()}"
    settings = make_settings(tmp_path, llm, [down])
    assert settings.rag.backend == "auto"  # the default

    with caplog.at_level("INFO", logger="pipeline"):
        result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rag backend:")]
    assert lines == [f"rag backend: local (auto: no HuixiangDou server at {down}; answering from "
                     f"{settings.paths.data_dir} with the local backend (BM25 passages + the LLM))"]
    answers = rows(settings.state_dir / "answers.jsonl")
    assert answers and {r["backend"] for r in answers} == {"local"}
    start = [e for e in rows(settings.state_dir / "events.jsonl") if e["event"] == "run_start"]
    assert start[-1]["backend"] == "local"
    report = orjson.loads((settings.out_dir / REPORT_JSON).read_bytes())
    assert report["backends"] == {"local": {"answered": len(FACTS)}}
    assert f"| local | {len(FACTS)} | 0 |" in (settings.out_dir / "report.md").read_text(encoding="utf-8")


async def test_auto_with_a_busy_server_waits_for_it(tmp_path: Path, llm: FakeLLM) -> None:
    async with FakeHuixiangdou(latency=(1.0, 1.0)) as fake:
        settings = make_settings(tmp_path, llm, [fake.url])
        async with aiohttp.ClientSession() as session:
            # Another client keeps the one-at-a-time server busy while the run starts.
            busy = asyncio.create_task(session.post(
                fake.url + "/huixiangdou_inference", json={"text": "占着服务器的问题是什么？", "image": ""}))
            await fake.wait_in_flight(1)
            async with LLMClient(settings.llm) as client:
                answerer, choice = await open_answerer(settings, client, earlier=None)
                try:
                    assert isinstance(answerer, HuixiangdouPool) and choice.backend == "huixiangdou"
                    assert answerer.slots == settings.huixiangdou.concurrency_per_server
                    await answerer.probe()
                    outcome = await answerer.ask("黄风大圣的弱点是什么？")
                finally:
                    await answerer.aclose()
            (await busy).release()
    assert outcome.kind == "answered" and outcome.server == fake.url
    assert llm.calls == 0  # the local backend was never used


async def test_a_resume_keeps_to_the_local_backend_when_a_server_appears(
    tmp_path: Path, llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"http://127.0.0.1:{_free_port()}"
    first = make_settings(tmp_path, llm, [down])
    assert (await run_qa(first, install_signals=False)).status == "complete"
    async with FakeHuixiangdou() as fake:
        again = make_settings(tmp_path, llm, [fake.url])
        async with LLMClient(again.llm) as client:
            state = load_state(again, repair=False)
            earlier = earlier_backend(state, again.state_dir / "answers.jsonl")
            answerer, choice = await open_answerer(again, client, earlier=earlier)
            await answerer.aclose()
        assert fake.requests == 0
    assert earlier == "local"
    assert isinstance(answerer, LocalAnswerer)
    assert 'set [rag] backend = "huixiangdou"' in choice.reason


def test_rows_of_old_ledgers_without_a_backend_tell_it_by_their_server(tmp_path: Path) -> None:
    class Old:  # a plan from events that never recorded a backend
        last_backend = None

    answers = tmp_path / "answers.jsonl"
    answers.write_bytes(b'{"conv":"a","turn":1,"kind":"answered","server":"local"}\n')
    assert earlier_backend(Old(), answers) == "local"  # type: ignore[arg-type]
    answers.write_bytes(b'{"conv":"a","turn":1,"kind":"answered","server":"http://h:23333"}\n')
    assert earlier_backend(Old(), answers) == "huixiangdou"  # type: ignore[arg-type]
    answers.write_bytes(b"")
    assert earlier_backend(Old(), answers) is None  # type: ignore[arg-type]
    assert earlier_backend(Old(), tmp_path / "missing.jsonl") is None  # type: ignore[arg-type]


def test_status_counts_answers_per_backend(tmp_path: Path) -> None:
    from pipeline.outputs.status import build_status, render_status
    from pipeline.store.view import open_ledgers, state_from_ledgers

    settings = parse_settings({"paths": {"out_dir": str(tmp_path / "out")}}, environ={})
    settings.state_dir.mkdir(parents=True)
    rows_ = [
        {"conv": "a", "turn": 1, "kind": "answered", "answer": "x", "server": "http://h:1",
         "backend": "huixiangdou"},
        {"conv": "b", "turn": 1, "kind": "skipped", "server": "local", "backend": "local"},
        {"conv": "c", "turn": 1, "kind": "answered", "answer": "y", "server": "local"},  # an old row
    ]
    (settings.state_dir / "answers.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows_))
    with open_ledgers(settings.state_dir) as ledgers:
        state = state_from_ledgers(settings, ledgers)
        status = build_status(settings, ledgers, state, None)
    assert status["by_backend"] == {"huixiangdou": {"answered": 1}, "local": {"answered": 1, "skipped": 1}}
    text = render_status(status)
    assert "  by huixiangdou: answered 1" in text and "  by local: answered 1, skipped 1" in text


def test_dry_run_says_which_backend_auto_would_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import run

    down = f"http://127.0.0.1:{_free_port()}"
    toml = tmp_path / "settings.toml"
    toml.write_text(f'[paths]\nout_dir = "{tmp_path / "out"}"\n[huixiangdou]\nurls = ["{down}"]\n',
                    encoding="utf-8")
    assert run.main(["qa", "--dry-run", "--settings", str(toml)]) == 0
    out = capsys.readouterr().out
    assert f"answers would come from: rag backend: local (auto: no HuixiangDou server at {down}" in out
    assert "local index + LLM" in out


async def test_auto_resuming_a_huixiangdou_run_with_no_server_stops_instead_of_answering_locally(
    tmp_path: Path, llm: FakeLLM
) -> None:
    from pipeline.errors import ServersDown

    async with FakeHuixiangdou() as fake:
        first = make_settings(tmp_path, llm, [fake.url])
        assert (await run_qa(first, install_signals=False)).status == "complete"
        gone = fake.url
    answers_before = (first.state_dir / "answers.jsonl").read_bytes()
    assert {r["backend"] for r in rows(first.state_dir / "answers.jsonl")} == {"huixiangdou"}
    # More questions wanted, the server gone: auto must not quietly go on with the local backend.
    again = parse_settings({**_settings_dict(tmp_path, llm, [gone]),
                            "questions": {"aspects": ["游戏概述"], "per_aspect": len(FACTS) + 2,
                                          "batch_size": len(FACTS), "max_chars": 80}},
                           source="test", environ={FAKE_KEY_ENV: FAKE_KEY})
    calls = llm.calls
    with pytest.raises(ServersDown, match=gone):
        await run_qa(again, install_signals=False)
    assert (again.state_dir / "answers.jsonl").read_bytes() == answers_before
    assert llm.calls - calls <= 1  # at most the start-up probe of the LLM; no local answer
    assert not (again.state_dir / "local_index").exists()
