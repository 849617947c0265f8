"""Every exit from the QA graph is explicit: a stop ends the run within its
grace, is never recorded as a failed turn, and no LLM request leaves after it
began. The real openai and aiohttp clients against the fakes on 127.0.0.1,
on both event loops, with virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.qa.graph import Graph
from pipeline.qa.stage import run_qa
from run import exit_code
from tests.fakes.clock import FakeClock
from tests.fakes.huixiangdou_server import FakeHuixiangdou
from tests.fakes.llm_fixtures import FAKE_KEY
from tests.fakes.llm_server import FakeLLM, Messages
from tests.fakes.loops import BOTH_LOOPS
from tests.test_qa import conversations, make_settings, rows

pytestmark = BOTH_LOOPS

Fakes = Callable[..., Awaitable[list[FakeHuixiangdou]]]

ONE_ASPECT = {"aspects": ["战斗系统"]}


async def test_a_stop_during_a_quota_wait_ends_the_run_when_the_grace_is_over(
    tmp_path: Path, hxd_fakes: Fakes
) -> None:
    clock = FakeClock()
    servers = await hxd_fakes(2)
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",), quota_style="deepseek") as llm:
        llm.quota_after = 1  # the first question batch, then the balance is gone
        settings = make_settings(
            tmp_path, llm, servers,
            questions={**ONE_ASPECT, "per_aspect": 2, "batch_size": 1},
            conversations={"min_turns": 2, "max_turns": 2},
            run={"on_quota": "wait", "quota_wait_s": 60, "grace_s": 30},
        )
        graphs: list[Graph] = []
        task = asyncio.create_task(run_qa(settings, install_signals=False, on_graph=graphs.append,
                                          clock=clock, sleep=clock.sleep))
        # The producer (its second batch) and a worker (the follow-up of the
        # first question) both hit the wall and wait for the one quota probe.
        await llm.wait_until(lambda: llm.status_counts[402] >= 2)
        await clock.sleeping()
        llm.quota_after = None
        llm.gate = asyncio.Event()  # the probe hangs longer than the grace
        clock.advance(60)
        await llm.wait_in_flight(1)

        graphs[0].request_stop("interrupted", "stopped by SIGTERM")
        await clock.sleeping()  # the grace
        clock.advance(30)
        result = await asyncio.wait_for(task, 10)  # a swallowed cancel waits here for ever

    assert result.status == "interrupted" and exit_code(result.status) == 130
    assert [r for r in rows(settings, "answers") if r["kind"] != "answered"] == []


def revoke_key_after_first_reply(llm: FakeLLM) -> None:
    """The key stops working once the first reply (the question batch) is out."""

    def responder(messages: Messages) -> str:
        llm.api_key = "sk-revoked"
        return llm.default_responder(messages)

    llm.responder = responder


@pytest.mark.parametrize("stop", ["quota", "fatal"])
async def test_a_stop_during_follow_ups_is_no_failed_turn_and_the_resume_finishes_them(
    tmp_path: Path, hxd_fakes: Fakes, stop: str
) -> None:
    servers = await hxd_fakes(2)
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",), quota_style="deepseek") as llm:
        if stop == "quota":
            llm.quota_after = 1
        else:
            revoke_key_after_first_reply(llm)
        # One attempt per turn: a stop wrongly counted as a failed turn would
        # leave its conversation short for good.
        settings = make_settings(
            tmp_path, llm, servers,
            questions={**ONE_ASPECT, "per_aspect": 3, "batch_size": 3},
            conversations={"min_turns": 2, "max_turns": 2},
            run={"max_answer_attempts": 1},
        )
        first = await run_qa(settings, install_signals=False)
        assert first.status == stop
        assert [r for r in rows(settings, "answers") if r["kind"] != "answered"] == []

        llm.quota_after, llm.api_key, llm.responder = None, FAKE_KEY, None
        second = await run_qa(settings, install_signals=False)

    assert second.status == "complete"
    records = conversations(settings)
    assert len(records) == 3 and all(len(r["conversation"]) == 2 for r in records)


@pytest.mark.parametrize("waiting_in", ["concurrency", "rpm"])
async def test_no_llm_request_leaves_after_a_quota_stop(
    tmp_path: Path, hxd_fakes: Fakes, waiting_in: str
) -> None:
    # Three producers ask at once; two of them wait in the client's limits
    # (a free concurrency slot, or the requests-per-minute pacing) when the
    # first call learns that the balance is gone.
    limits: dict[str, Any] = {"concurrency": 1} if waiting_in == "concurrency" else {"rpm": 600}
    servers = await hxd_fakes(2)
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",), quota_style="deepseek") as llm:
        llm.quota_after = 0
        settings = make_settings(tmp_path, llm, servers, llm=limits)
        result = await run_qa(settings, install_signals=False)

    assert result.status == "quota" and exit_code(result.status) == 75
    assert llm.status_counts[402] == 1, "calls waiting in the limiter were sent after the stop"
    assert len(llm.requests) == 1
