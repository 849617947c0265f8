"""The QA stage end to end: the real openai and aiohttp clients against the fake
LLM API and fake HuixiangDou servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.qa.graph import Graph
from pipeline.qa.stage import run_qa
from pipeline.settings import Settings, parse_settings
from pipeline.store.resume import target_turns
from pipeline.outputs.validate import validate_file
from run import exit_code
from tests.fakes.clock import FakeClock
from tests.fakes.huixiangdou_server import FakeHuixiangdou
from tests.fakes.llm_fixtures import FAKE_KEY, FAKE_KEY_ENV
from tests.fakes.llm_server import FakeLLM
from tests.fakes.loops import BOTH_LOOPS

pytestmark = BOTH_LOOPS

SYSTEM = "你是测试助手。"


def make_settings(
    tmp_path: Path, fake: FakeLLM, hxd: list[FakeHuixiangdou], **sections: dict[str, Any]
) -> Settings:
    data: dict[str, Any] = {
        "paths": {"data_dir": str(tmp_path / "data"), "out_dir": str(tmp_path / "out")},
        "llm": {"base_url": fake.base_url, "model": "fake-model", "api_key_env": FAKE_KEY_ENV,
                "timeout_s": 10, "max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
                "rpm": 100_000, "tpm": 100_000_000},
        # instant_rejection_s 0: the fake rejects in under a millisecond (its times scaled).
        "huixiangdou": {"urls": [h.url for h in hxd], "timeout_s": 10, "backoff_base_s": 0.01,
                        "instant_rejection_s": 0},
        "questions": {"aspects": ["战斗系统", "游戏世界观", "主要角色"], "per_aspect": 4, "batch_size": 3},
        "conversations": {"system_prompt": SYSTEM},
        "run": {"grace_s": 5, "progress_interval_s": 60},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_settings(data, source="test", environ={FAKE_KEY_ENV: FAKE_KEY})


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",), shape="mixed") as fake:
        yield fake


@pytest.fixture
async def servers() -> AsyncIterator[list[FakeHuixiangdou]]:
    async with FakeHuixiangdou(seed=1) as a, FakeHuixiangdou(seed=2) as b:
        yield [a, b]


def conversations(settings: Settings) -> list[dict[str, Any]]:
    path = settings.out_dir / "conversations.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def rows(settings: Settings, name: str) -> list[dict[str, Any]]:
    path = settings.state_dir / f"{name}.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def asked(servers: list[FakeHuixiangdou]) -> dict[str, int]:
    total: dict[str, int] = {}
    for s in servers:
        for q, n in s.counts.items():
            total[q] = total.get(q, 0) + n
    return total


async def test_complete_run_makes_a_valid_dataset_and_asks_each_question_once(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou]
) -> None:
    settings = make_settings(tmp_path, llm, servers)
    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete" and exit_code(result.status) == 0
    questions = rows(settings, "questions")
    assert len(questions) == 12
    assert {q["aspect"] for q in questions} == {"战斗系统", "游戏世界观", "主要角色"}
    counts = asked(servers)
    assert sorted(counts) == sorted(q["text"] for q in questions)
    assert set(counts.values()) == {1}
    assert all(s.counts for s in servers), "questions were spread over both servers"

    records = conversations(settings)
    assert len(records) == 12 == result.conversations
    assert [r["conversation"][0]["input"] for r in records] == [q["text"] for q in questions]
    assert all(r["conversation"][0]["system"] == SYSTEM for r in records)
    report = validate_file(settings.out_dir / "conversations.jsonl")
    assert report.errors == [] and report.kind == "conversation"
    assert result.usage["prompt_tokens"] > 0


async def test_rerun_after_completion_pays_for_nothing(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou]
) -> None:
    settings = make_settings(tmp_path, llm, servers)
    await run_qa(settings, install_signals=False)
    chats, asked_before = len(llm.requests), dict(asked(servers))
    first = (settings.out_dir / "conversations.jsonl").read_bytes()

    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    assert len(llm.requests) == chats, "no LLM call on a finished run"
    assert asked(servers) == asked_before
    assert (settings.out_dir / "conversations.jsonl").read_bytes() == first


async def test_quota_stops_with_75_and_the_resume_finishes_without_redoing_work(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou]
) -> None:
    llm.quota_after = 3  # question batches: 2 per aspect, 6 in all
    llm.quota_style = "deepseek"
    settings = make_settings(tmp_path, llm, servers)

    stopped = await run_qa(settings, install_signals=False)

    assert stopped.status == "quota" and exit_code(stopped.status) == 75
    assert "402" in stopped.detail or "balance" in stopped.detail.lower()
    assert llm.status_counts[402] >= 1
    partial = conversations(settings)  # a usable partial dataset is written
    done_before = len(rows(settings, "questions"))
    answered = [r for r in rows(settings, "answers") if r["kind"] == "answered"]
    assert 0 < done_before < 12 and len(partial) == len(answered)
    assert llm.status_counts[402] <= settings.llm.concurrency, "quota was not retried in a loop"

    llm.quota_after = None
    resumed = await run_qa(settings, install_signals=False)

    assert resumed.status == "complete"
    assert len(rows(settings, "questions")) == 12
    assert set(asked(servers).values()) == {1}, "no question was asked twice"
    assert len(conversations(settings)) == 12


async def test_vetoed_skipped_and_gated_answers_never_reach_the_dataset(
    tmp_path: Path, llm: FakeLLM
) -> None:
    verdicts = iter(["vetoed", "safety", "irrelevant_material", "not_question"])
    chosen: dict[str, str] = {}

    def responder(question: str) -> str:
        return chosen.setdefault(question, next(verdicts, "answered"))

    async with FakeHuixiangdou(responder=responder) as hxd:
        settings = make_settings(tmp_path, llm, [hxd])
        result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    answers = {r["question"]: r for r in rows(settings, "answers")}
    kinds = sorted(answers[q]["kind"] for q, v in chosen.items() if v != "answered")
    assert kinds == ["skipped", "skipped", "vetoed", "vetoed"]
    dataset_questions = {r["conversation"][0]["input"] for r in conversations(settings)}
    assert dataset_questions == {q for q, v in chosen.items() if v == "answered"}
    assert len(dataset_questions) == 8


async def test_follow_ups_are_kept_as_asked_and_sent_standalone(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou]
) -> None:
    settings = make_settings(
        tmp_path, llm, servers,
        conversations={"min_turns": 2, "max_turns": 3},
        questions={"aspects": ["战斗系统"], "per_aspect": 5, "batch_size": 5, "topic": "黑神话：悟空"},
    )
    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    records = conversations(settings)
    assert len(records) == 5
    firsts = {q["id"]: q for q in rows(settings, "questions") if "aspect" in q}
    for record in records:
        turns = record["conversation"]
        conv = next(i for i, q in firsts.items() if q["text"] == turns[0]["input"])
        assert len(turns) == target_turns(conv, 2, 3)
        assert turns[0]["system"] == SYSTEM
        assert all("system" not in t for t in turns[1:])
        # The dataset keeps the follow-up as a person asks it in the conversation ...
        assert not any(t["input"].startswith("关于") for t in turns[1:])
    # ... and the server, which keeps no history, got it standalone, naming the topic.
    sent = asked(servers)
    followups = [q["text"] for q in rows(settings, "questions") if "conv" in q]
    assert followups and all(f"关于《黑神话：悟空》，{f}" in sent for f in followups)
    assert set(sent.values()) == {1}


async def test_multi_turn_resume_continues_at_the_next_turn(
    tmp_path: Path, servers: list[FakeHuixiangdou]
) -> None:
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",)) as llm:
        # One question batch, then the quota runs out while writing follow-ups.
        llm.quota_after = 2
        settings = make_settings(
            tmp_path, llm, servers,
            conversations={"min_turns": 3, "max_turns": 3},
            questions={"aspects": ["战斗系统"], "per_aspect": 3, "batch_size": 3},
            llm={"concurrency": 1},
        )
        first = await run_qa(settings, install_signals=False)
        assert first.status == "quota"
        answered_turns = [(r["conv"], r["turn"]) for r in rows(settings, "answers") if r["kind"] == "answered"]
        assert any(t == 2 for _, t in answered_turns), "stopped in the middle of conversations"

        llm.quota_after = None
        second = await run_qa(settings, install_signals=False)

    assert second.status == "complete"
    records = conversations(settings)
    assert len(records) == 3 and all(len(r["conversation"]) == 3 for r in records)
    answered = [(r["conv"], r["turn"]) for r in rows(settings, "answers") if r["kind"] == "answered"]
    assert len(answered) == len(set(answered)) == 9, "every turn answered exactly once"
    assert set(asked(servers).values()) == {1}


async def test_failed_answers_are_retried_on_the_next_run(
    tmp_path: Path, llm: FakeLLM
) -> None:
    async with FakeHuixiangdou(script={}, responder=lambda q: "web_search_fail") as hxd:
        settings = make_settings(tmp_path, llm, [hxd], questions={"aspects": ["战斗系统"], "per_aspect": 2})
        first = await run_qa(settings, install_signals=False)
        assert first.status == "complete"
        assert [r["kind"] for r in rows(settings, "answers")] == ["failed", "failed"]
        assert conversations(settings) == []

        hxd.responder = None
        second = await run_qa(settings, install_signals=False)

    assert second.status == "complete"
    assert len(conversations(settings)) == 2
    assert set(hxd.counts.values()) == {2}


async def test_a_second_run_on_the_same_out_dir_is_refused(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou]
) -> None:
    from pipeline.errors import LockedError
    from pipeline.store.ledger import RunLock

    settings = make_settings(tmp_path, llm, servers)
    with RunLock(settings.out_dir), pytest.raises(LockedError, match="pid"):
        await run_qa(settings, install_signals=False)
    assert llm.requests == []


async def test_no_server_running_names_the_urls_and_pays_nothing(tmp_path: Path, llm: FakeLLM) -> None:
    from pipeline.errors import ServersDown

    async with FakeHuixiangdou() as hxd:
        dead = hxd.url
    settings = make_settings(tmp_path, llm, [], huixiangdou={"urls": [dead]}, rag={"backend": "huixiangdou"})
    with pytest.raises(ServersDown) as info:
        await run_qa(settings, install_signals=False)
    assert dead in str(info.value) and "huixiangdou.server" in str(info.value)
    assert llm.requests == []


async def test_stop_request_finishes_in_flight_and_resume_completes(
    tmp_path: Path, llm: FakeLLM
) -> None:
    gate = asyncio.Event()
    async with FakeHuixiangdou(gate=gate) as hxd:
        settings = make_settings(tmp_path, llm, [hxd])
        graphs: list[Graph] = []
        task = asyncio.create_task(run_qa(settings, install_signals=False, on_graph=graphs.append))
        await hxd.wait_in_flight(1)
        graphs[0].request_stop("interrupted", "test")
        gate.set()
        result = await task
        assert result.status == "interrupted" and exit_code(result.status) == 130
        in_flight_answered = rows(settings, "answers")
        assert len(in_flight_answered) == 1, "the request in flight was finished and recorded"

        again = await run_qa(settings, install_signals=False)
    assert again.status == "complete"
    assert set(hxd.counts.values()) == {1}
    assert len(conversations(settings)) == 12


def failing_first(n: int) -> Any:
    """A fake HuixiangDou responder whose first ``n`` requests answer 500."""
    seen = iter(range(10**9))

    def responder(question: str) -> str:
        return "error_500" if next(seen) < n else "answered"

    return responder


async def test_servers_down_for_a_while_are_waited_for_then_the_run_goes_on(
    tmp_path: Path, llm: FakeLLM
) -> None:
    clock = FakeClock()
    async with FakeHuixiangdou(responder=failing_first(3)) as hxd:
        settings = make_settings(
            tmp_path, llm, [hxd],
            huixiangdou={"failures_before_rest": 3, "rest_s": 30, "recheck_s": 10, "down_timeout_s": 600},
        )
        run = asyncio.create_task(run_qa(settings, install_signals=False, clock=clock, sleep=clock.sleep))
        result = await clock.drive(run)
    assert result.status == "complete"
    assert 10 in clock.slept and 30 not in clock.slept, "the run waited for a check, not the whole rest"
    assert len(conversations(settings)) == 12


async def test_servers_down_longer_than_the_timeout_stop_the_run_cleanly(
    tmp_path: Path, llm: FakeLLM
) -> None:
    clock = FakeClock()
    async with FakeHuixiangdou(responder=failing_first(10**6)) as hxd:
        settings = make_settings(
            tmp_path, llm, [hxd],
            huixiangdou={"failures_before_rest": 1, "rest_s": 30, "down_timeout_s": 300},
        )
        run = asyncio.create_task(run_qa(settings, install_signals=False, clock=clock, sleep=clock.sleep))
        result = await clock.drive(run)
    assert result.status == "servers_down" and exit_code(result.status) == 1
    assert hxd.url in result.detail
    assert conversations(settings) == []
    assert len(rows(settings, "questions")) > 0, "the questions already paid for are kept"


async def test_on_quota_wait_sleeps_probes_and_goes_on(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou]
) -> None:
    clock = FakeClock()
    llm.quota_after = 2
    settings = make_settings(tmp_path, llm, servers, run={"on_quota": "wait", "quota_wait_s": 600})
    run = asyncio.create_task(run_qa(settings, install_signals=False, clock=clock, sleep=clock.sleep))
    await llm.wait_until(lambda: llm.status_counts[429] >= 1)
    await clock.sleeping()
    clock.advance(600)  # the first probe: still no quota
    await llm.wait_until(lambda: llm.status_counts[429] >= 2)
    await clock.sleeping()
    llm.quota_after = None  # topped up

    result = await clock.drive(run)

    assert result.status == "complete"
    assert clock.slept.count(600) >= 2, "waited, probed, waited again"
    assert len(conversations(settings)) == 12
    assert set(asked(servers).values()) == {1}


async def test_a_resume_asks_huixiangdou_while_the_dedup_index_is_still_seeding(
    tmp_path: Path, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seeding a large resume's index takes tens of seconds; pending answers
    # must not wait for it, and producers must not screen before it is done.
    import threading

    from pipeline.qa.dedup import Deduper

    async with FakeHuixiangdou(script={}, responder=lambda q: "web_search_fail") as hxd:
        settings = make_settings(tmp_path, llm, [hxd], questions={"aspects": ["战斗系统"], "per_aspect": 2})
        assert (await run_qa(settings, install_signals=False)).status == "complete"

        asked_during_seed = threading.Event()
        order: list[str] = []
        real_seed, real_add_many = Deduper.seed, Deduper.add_many

        def slow_seed(self: Deduper, questions: Any, **kw: Any) -> None:
            # The gate opens on the first HuixiangDou request: a seeding that
            # blocked the answers would wait here in vain until the timeout.
            order.append("seed_start")
            released = asked_during_seed.wait(timeout=10)
            real_seed(self, questions, **kw)
            order.append("seed_end" if released else "seed_end_without_a_request")

        def add_many(self: Deduper, questions: Any) -> list[str | None]:
            order.append("add_many")
            return real_add_many(self, questions)

        def responder(question: str) -> str:
            asked_during_seed.set()
            return "answered"

        monkeypatch.setattr(Deduper, "seed", slow_seed)
        monkeypatch.setattr(Deduper, "add_many", add_many)
        hxd.responder = responder
        more = make_settings(tmp_path, llm, [hxd], questions={"aspects": ["战斗系统"], "per_aspect": 4})
        second = await run_qa(more, install_signals=False)

    assert second.status == "complete"
    assert order[:2] == ["seed_start", "seed_end"], "HuixiangDou was asked while seeding"
    assert "add_many" in order[2:], "new questions were screened, after the seeding"
    texts = [q["text"] for q in rows(more, "questions")]
    assert len(texts) == 4 == len(set(texts)), "the seeded questions were not written again"
    assert len(conversations(more)) == 4


async def test_an_outage_of_huixiangdous_llm_that_persists_stops_resumably_and_writes_nothing_off(
    tmp_path: Path, llm: FakeLLM
) -> None:
    async with FakeHuixiangdou(llm_down="2024-09") as hxd:
        settings = make_settings(tmp_path, llm, [hxd], huixiangdou={"down_timeout_s": 0})
        result = await run_qa(settings, install_signals=False)
        assert (result.status, exit_code(result.status)) == ("servers_down", 1)
        line = result.line()
        assert "the LLM behind it does not" in line and "config.ini" in line and "[llm]" in line
        assert "qa` again to resume" in line
        assert rows(settings, "answers") == [], "no question written off as skipped"

        hxd.llm_down = None  # the LLM is back: the next run asks every question
        again = await run_qa(settings, install_signals=False)
    assert again.status == "complete"
    assert {r["kind"] for r in rows(settings, "answers")} == {"answered"}
    assert len(conversations(settings)) == 12


def outage_between(first: int, last: int, release: str) -> Any:
    """A responder whose requests ``first``..``last`` meet an outage of the LLM behind the server."""
    seen = iter(range(10**9))

    def responder(question: str) -> str:
        return f"outage_{release.replace('-', '_')}" if first <= next(seen) <= last else "answered"

    return responder


@pytest.mark.parametrize("release", ["2024-09", "2024-10"])
async def test_a_short_outage_of_huixiangdous_llm_is_waited_out_and_every_question_answered(
    tmp_path: Path, llm: FakeLLM, release: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    async with FakeHuixiangdou(responder=outage_between(2, 9, release)) as hxd:
        settings = make_settings(
            tmp_path, llm, [hxd],
            huixiangdou={"recheck_s": 10, "rest_s": 60, "down_timeout_s": 600},
        )
        run = asyncio.create_task(run_qa(settings, install_signals=False, clock=clock, sleep=clock.sleep))
        result = await clock.drive(run)
    assert result.status == "complete"
    answers = rows(settings, "answers")
    assert {r["kind"] for r in answers} == {"answered"} and len(answers) == 12
    assert len(conversations(settings)) == 12
    waiting = [r.getMessage() for r in caplog.records if "Waiting for one to answer" in r.getMessage()]
    assert waiting and all(".;" not in m and "config.ini" in m for m in waiting)


async def test_usage_rows_are_written_only_when_usage_changed(
    tmp_path: Path, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.services.llm import Usage

    gate = asyncio.Event()
    ticks = 0
    snapshot = Usage.snapshot

    def counted(usage: Usage) -> dict[str, Any]:
        # Each progress tick of the graph reads the usage once.
        nonlocal ticks
        ticks += 1
        if ticks >= 30:  # many ticks with HuixiangDou held: nothing changes meanwhile
            gate.set()
        return snapshot(usage)

    monkeypatch.setattr(Usage, "snapshot", counted)
    async with FakeHuixiangdou(gate=gate) as hxd:
        settings = make_settings(tmp_path, llm, [hxd], run={"progress_interval_s": 0.001})
        result = await run_qa(settings, install_signals=False)
    assert result.status == "complete"
    usage = [r["usage"] for r in rows(settings, "events") if r["event"] == "usage"]
    assert usage and all(a != b for a, b in zip(usage, usage[1:]))
    assert len(usage) < ticks


_FOLLOWUP_TEXT = ("具体讲讲", "后来怎样", "要找")  # the fake LLM's follow-up templates


def followups(verdict: Any) -> Any:
    """A fake HuixiangDou responder: first turns answered, the n-th follow-up
    asked (counting from 0) gets ``verdict(n)``."""
    seen = iter(range(10**9))

    def responder(question: str) -> str:
        return verdict(next(seen)) if any(t in question for t in _FOLLOWUP_TEXT) else "answered"

    return responder


async def test_a_vetoed_follow_up_gets_a_fresh_one_and_the_conversation_completes(
    tmp_path: Path, llm: FakeLLM
) -> None:
    veto_every_other = followups(lambda n: "vetoed" if n % 2 == 0 else "answered")
    async with FakeHuixiangdou(responder=veto_every_other) as hxd:  # one slot: conversations in turn
        settings = make_settings(tmp_path, llm, [hxd], conversations={"min_turns": 2, "max_turns": 2})
        result = await run_qa(settings, install_signals=False)
    assert result.status == "complete"
    kinds = Counter(r["kind"] for r in rows(settings, "answers"))
    assert kinds == {"answered": 24, "vetoed": 12}
    assert [len(c["conversation"]) for c in conversations(settings)] == [2] * 12
    assert json.loads((settings.out_dir / "report.json").read_text())["conversations"]["short"] == 0


@pytest.mark.parametrize("keep_short", [True, False])
async def test_conversations_still_short_are_counted_and_kept_unless_the_setting_says_no(
    tmp_path: Path, llm: FakeLLM, keep_short: bool
) -> None:
    async with FakeHuixiangdou(responder=followups(lambda n: "vetoed")) as hxd:
        settings = make_settings(tmp_path, llm, [hxd], conversations={
            "min_turns": 2, "max_turns": 2, "keep_short": keep_short})
        result = await run_qa(settings, install_signals=False)
    assert result.status == "complete"
    answers = rows(settings, "answers")
    # Each conversation: turn 1 answered, then max_answer_attempts (3) fresh follow-ups vetoed.
    assert Counter((r["turn"], r["kind"]) for r in answers) == {(1, "answered"): 12, (2, "vetoed"): 36}
    report = json.loads((settings.out_dir / "report.json").read_text())
    assert report["conversations"]["short"] == 12
    assert "Short: 12 ended before their target turns" in (settings.out_dir / "report.md").read_text()
    if keep_short:
        assert [len(c["conversation"]) for c in conversations(settings)] == [1] * 12
    else:
        assert conversations(settings) == []


async def test_qa_retry_asks_again_the_questions_skipped_or_vetoed(tmp_path: Path, llm: FakeLLM) -> None:
    verdicts = iter(["not_question", "vetoed", "not_question"])
    async with FakeHuixiangdou(responder=lambda q: next(verdicts, "answered")) as hxd:
        settings = make_settings(tmp_path, llm, [hxd])
        first = await run_qa(settings, install_signals=False)
        assert first.stats["outcomes"] == {"answered": 9, "skipped": 2, "vetoed": 1}
        assert "--retry skipped,vetoed" in (settings.out_dir / "report.md").read_text()
        plain = await run_qa(settings, install_signals=False)  # nothing left to ask
        assert plain.stats["outcomes"] == {} and sum(hxd.counts.values()) == 12
        again = await run_qa(settings, install_signals=False, retry=("skipped",))
        assert again.stats["outcomes"] == {"answered": 2}
        last = await run_qa(settings, install_signals=False, retry=("skipped", "vetoed"))
        assert last.stats["outcomes"] == {"answered": 1}
    assert len(conversations(settings)) == 12


async def test_when_a_check_finds_a_server_back_every_waiting_worker_resumes_at_once(
    tmp_path: Path, llm: FakeLLM
) -> None:
    clock = FakeClock()
    async with FakeHuixiangdou(llm_down="2024-09") as hxd:
        settings = make_settings(
            tmp_path, llm, [hxd],
            questions={"aspects": ["战斗系统"], "per_aspect": 2, "batch_size": 2},
            huixiangdou={"concurrency_per_server": 2, "failures_before_rest": 1, "max_retries": 0,
                         "recheck_s": 10, "rest_s": 600, "down_timeout_s": 600},
        )
        task = asyncio.create_task(run_qa(settings, install_signals=False, clock=clock, sleep=clock.sleep))
        await asyncio.wait_for(clock.sleeping(2), 10)  # both workers wait for the check
        hxd.llm_down = None
        hxd.hold = asyncio.Event()  # the check stays on the server until released
        clock.advance(10)
        await asyncio.wait_for(hxd.wait_in_flight(1), 10)
        await asyncio.wait_for(clock.sleeping(1), 10)  # the other worker: the next check is 10 s on
        hxd.hold.set()  # the check is answered: the other one goes on without waiting those 10 s
        result = await asyncio.wait_for(task, 10)
    assert result.status == "complete"
    assert [r["kind"] for r in rows(settings, "answers")] == ["answered", "answered"]
