"""The HuixiangDou pool against fake servers on 127.0.0.1: protocol, pool, failures."""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
import pytest

from pipeline.errors import FatalServiceError, ServersDown
from pipeline.services.huixiangdou import HuixiangdouPool
from pipeline.services.hxd_protocol import EMPTY_ANSWER, IRRELEVANT_MATERIAL, START_COMMAND
from pipeline.settings import HuixiangdouSettings
from tests.fakes.huixiangdou_server import STATES, FakeHuixiangdou, default_answer
from tests.fakes.hxd_fixtures import HxdClock

Settings = Callable[..., HuixiangdouSettings]
Fakes = Callable[..., Awaitable[list[FakeHuixiangdou]]]

Q = "黑神话悟空是哪一天发售的？"

EXPECTED = {
    "answered": ("answered", "success"),
    "vetoed": ("vetoed", "Irrelevant answer."),
    "safety": ("vetoed", STATES["prohibited"]),
    "irrelevant_material": ("skipped", IRRELEVANT_MATERIAL),
    "short": ("skipped", "Query length too short"),
    "not_question": ("skipped", STATES["not_question"]),
    "no_topic": ("skipped", STATES["no_topic"]),
    "unrelated": ("skipped", STATES["unrelated"]),
    "web_search_fail": ("failed", STATES["web_search_fail"]),
    "no_search_result": ("failed", STATES["no_search_result"]),
    "sourcegraph": ("failed", STATES["sourcegraph"]),
    "sourcegraph_llm": ("failed", STATES["sourcegraph_llm"]),
}


async def reach(fake: FakeHuixiangdou, n: int) -> None:
    """Wait until ``fake`` holds ``n`` requests.

    The timeout is only a safety net: a regression fails instead of hanging.
    """
    await asyncio.wait_for(fake.wait_in_flight(n), 10)


def pool_for(settings: HuixiangdouSettings, clock: HxdClock | None = None) -> HuixiangdouPool:
    if clock is None:
        return HuixiangdouPool(settings, rng=random.Random(0))
    return HuixiangdouPool(settings, clock=clock, sleep=clock.sleep, rng=random.Random(0))


# ------------------------------------------------------------ protocol


@pytest.mark.parametrize("endpoint", ["inference", "stream"])
@pytest.mark.parametrize("scenario", sorted(EXPECTED))
async def test_every_state_sequence_becomes_its_outcome(
    hxd_fake: FakeHuixiangdou, hxd_settings: Settings, scenario: str, endpoint: str
) -> None:
    hxd_fake.script[Q] = scenario
    pool = pool_for(hxd_settings(hxd_fake.url, endpoint=endpoint))
    try:
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert (outcome.kind, outcome.state) == EXPECTED[scenario]
    assert outcome.answer == (default_answer(Q) if scenario == "answered" else "")
    assert (outcome.server, outcome.attempts) == (hxd_fake.url, 1)
    assert hxd_fake.counts[Q] == 1


async def test_answered_outcome_carries_refs(hxd_fake: FakeHuixiangdou, hxd_settings: Settings) -> None:
    pool = pool_for(hxd_settings(hxd_fake.url))
    try:
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert outcome.refs == ("wukong.md",)


async def test_short_questions_are_refused_by_the_server_not_the_client(
    hxd_fake: FakeHuixiangdou, hxd_settings: Settings
) -> None:
    pool = pool_for(hxd_settings(hxd_fake.url))
    try:
        outcome = await pool.ask("悟空是谁")
    finally:
        await pool.aclose()
    assert (outcome.kind, outcome.state) == ("skipped", "Query length too short")
    assert hxd_fake.counts["悟空是谁"] == 1


@pytest.mark.parametrize(
    ("scenario", "kind", "answer", "refs", "state"),
    [
        ("answered", "answered", default_answer(Q), ("wukong.md",), "success"),
        ("vetoed", "vetoed", "", (), EMPTY_ANSWER),
        ("irrelevant_material", "vetoed", "", (), EMPTY_ANSWER),
    ],
)
async def test_chat_with_repo_bare_string_shape(
    hxd_fakes: Fakes, hxd_settings: Settings,
    scenario: str, kind: str, answer: str, refs: tuple[str, ...], state: str,
) -> None:
    (fake,) = await hxd_fakes(1, shape="chat_with_repo", script={Q: scenario})
    pool = pool_for(hxd_settings(fake.url))
    try:
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert (outcome.kind, outcome.answer, outcome.refs, outcome.state) == (kind, answer, refs, state)


async def test_stream_mode_against_chat_with_repo_says_what_to_change(
    hxd_fakes: Fakes, hxd_settings: Settings
) -> None:
    (fake,) = await hxd_fakes(1, shape="chat_with_repo")
    pool = pool_for(hxd_settings(fake.url, endpoint="stream"))
    try:
        with pytest.raises(FatalServiceError, match="chat_in_group") as err:
            await pool.ask(Q)
        assert 'endpoint = "inference"' in str(err.value)
        assert pool.stats()[fake.url]["in_flight"] == 0
    finally:
        await pool.aclose()


@pytest.mark.parametrize("seed", range(4))
async def test_stream_of_raw_utf8_cut_into_tiny_chunks_decodes(
    hxd_fakes: Fakes, hxd_settings: Settings, seed: int
) -> None:
    # Unescaped non-ASCII and 1-3 byte chunks: many cuts land inside a character.
    (fake,) = await hxd_fakes(1, ascii_escape=False, max_chunk=3, seed=seed)
    pool = pool_for(hxd_settings(fake.url, endpoint="stream"))
    try:
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert (outcome.kind, outcome.answer) == ("answered", default_answer(Q))


async def test_stream_endpoint_sends_unframed_cumulative_escaped_documents(
    hxd_fake: FakeHuixiangdou,
) -> None:
    # Fidelity of the fake: what the decoder is tested against must look like the real server.
    hxd_fake.script[Q] = "vetoed"
    async with aiohttp.ClientSession() as s:
        async with s.post(hxd_fake.url + "/huixiangdou_stream", json={"text": Q}) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            raw = await r.read()
    assert raw.isascii() and b"data:" not in raw
    docs, text, pos = [], raw.decode(), 0
    while pos < len(text):
        doc, pos = json.JSONDecoder().raw_decode(text, pos)
        docs.append(doc)
    assert [len(d["step"]) for d in docs] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------ HTTP errors


async def test_422_is_reported_as_a_bug_with_the_servers_detail(
    hxd_fake: FakeHuixiangdou, hxd_settings: Settings
) -> None:
    hxd_fake.script[Q] = "error_422"
    pool = pool_for(hxd_settings(hxd_fake.url))
    try:
        with pytest.raises(FatalServiceError, match="422") as err:
            await pool.ask(Q)
    finally:
        await pool.aclose()
    assert "bug" in str(err.value) and "Field required" in str(err.value)
    assert err.value.status == 422
    assert hxd_fake.counts[Q] == 1, "a 422 must not be retried"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b'{"image": ""}', ["body", "text"]),
        (b'{"text": 5}', ["body", "text"]),
        (b"not json", ["body", 0]),
        (b'["text"]', ["body"]),
    ],
    ids=["missing-text", "text-not-string", "bad-json", "not-an-object"],
)
async def test_fake_validates_requests_like_fastapi(
    hxd_fake: FakeHuixiangdou, body: bytes, loc: list[object]
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            hxd_fake.url + "/huixiangdou_inference", data=body,
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 422
            detail = (await r.json())["detail"]
    assert detail[0]["loc"] == loc
    assert hxd_fake.invalid == 1 and not hxd_fake.counts


async def test_500s_are_retried_with_doubling_backoff_then_become_a_failed_outcome(
    hxd_fake: FakeHuixiangdou, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    hxd_fake.script[Q] = "error_500"
    settings = hxd_settings(hxd_fake.url, max_retries=3, backoff_base_s=2.0, failures_before_rest=10)
    pool = pool_for(settings, hxd_clock)
    try:
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert (outcome.kind, outcome.state, outcome.attempts) == ("failed", "HTTP 500", 4)
    assert hxd_fake.counts[Q] == 4
    # Doubling with jitter of +-50%: 2, 4, 8 seconds nominal.
    assert len(hxd_clock.sleeps) == 3
    for delay, nominal in zip(hxd_clock.sleeps, [2.0, 4.0, 8.0]):
        assert nominal * 0.5 <= delay <= nominal * 1.5
    assert outcome.seconds == pytest.approx(sum(hxd_clock.sleeps))


async def test_a_500_then_an_answer_is_an_answer(
    hxd_fake: FakeHuixiangdou, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    hxd_fake.script[Q] = ["error_500", "drop", "answered"]
    pool = pool_for(hxd_settings(hxd_fake.url, max_retries=2), hxd_clock)
    try:
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert (outcome.kind, outcome.attempts) == ("answered", 3)
    assert pool.stats()[hxd_fake.url]["failures"] == 2


async def test_a_retry_goes_to_another_server(
    hxd_fakes: Fakes, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    bad, good = await hxd_fakes(2)
    bad.script[Q] = "error_500"
    pool = pool_for(hxd_settings(bad.url, good.url), hxd_clock)
    try:
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert (outcome.kind, outcome.server, outcome.attempts) == ("answered", good.url, 2)
    assert (bad.counts[Q], good.counts[Q]) == (1, 1)


@pytest.mark.parametrize("endpoint", ["inference", "stream"])
async def test_dropped_connections_are_retried(
    hxd_fake: FakeHuixiangdou, hxd_settings: Settings, hxd_clock: HxdClock, endpoint: str
) -> None:
    hxd_fake.script[Q] = "drop"
    pool = pool_for(hxd_settings(hxd_fake.url, endpoint=endpoint, max_retries=1), hxd_clock)
    try:
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert outcome.kind == "failed" and outcome.state.startswith("connection dropped")
    assert hxd_fake.counts[Q] == 2


async def test_a_timeout_is_a_failed_outcome_and_is_not_retried(
    hxd_fakes: Fakes, hxd_settings: Settings
) -> None:
    # The gate is never opened: the server holds the request until the client gives up.
    (fake,) = await hxd_fakes(1, gate=asyncio.Event())
    pool = pool_for(hxd_settings(fake.url, timeout_s=0.2))
    try:
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert (outcome.kind, outcome.state, outcome.attempts) == ("failed", "timeout after 0.2s", 1)
    assert fake.counts[Q] == 1
    assert pool.stats()[fake.url]["failures"] == 1


# ------------------------------------------------------------ pool


async def test_questions_spread_over_servers_within_per_server_caps(
    hxd_fakes: Fakes, hxd_settings: Settings
) -> None:
    gate = asyncio.Event()
    fakes = await hxd_fakes(3, gate=gate)
    pool = pool_for(hxd_settings(*(f.url for f in fakes), concurrency_per_server=2))
    questions = [f"第{i}个问题：悟空的武器是什么？" for i in range(20)]
    try:
        tasks = [asyncio.create_task(pool.ask(q)) for q in questions]
        for f in fakes:
            await reach(f, 2)  # every server reached its cap...
        assert {u: s["in_flight"] for u, s in pool.stats().items()} == {f.url: 2 for f in fakes}
        gate.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    finally:
        await pool.aclose()
    assert all(o.kind == "answered" for o in outcomes)
    assert [f.peak_in_flight for f in fakes] == [2, 2, 2]  # ...and never went over it
    merged = sum((f.counts for f in fakes), start=type(fakes[0].counts)())
    assert merged == {q: 1 for q in questions}, "every question asked exactly once"
    assert sum(s["done"] for s in pool.stats().values()) == 20


async def test_connection_pool_does_not_cap_concurrency_at_100(
    hxd_fakes: Fakes, hxd_settings: Settings
) -> None:
    gate = asyncio.Event()
    (fake,) = await hxd_fakes(1, gate=gate)
    pool = pool_for(hxd_settings(fake.url, concurrency_per_server=130, endpoint="stream"))
    try:
        tasks = [asyncio.create_task(pool.ask(f"问题编号{i}：悟空")) for i in range(130)]
        await reach(fake, 130)
        gate.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    finally:
        await pool.aclose()
    assert fake.peak_in_flight == 130
    assert {o.kind for o in outcomes} == {"answered"}


async def test_a_cancelled_ask_gives_its_slot_back(
    hxd_fakes: Fakes, hxd_settings: Settings
) -> None:
    gate = asyncio.Event()
    (fake,) = await hxd_fakes(1, gate=gate)
    pool = pool_for(hxd_settings(fake.url))
    try:
        task = asyncio.create_task(pool.ask(Q))
        await reach(fake, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats()[fake.url]["in_flight"] == 0
        gate.set()
        assert (await pool.ask("另一个问题：悟空是谁？")).kind == "answered"
    finally:
        await pool.aclose()


async def test_a_failing_server_rests_while_others_carry_on_then_comes_back(
    hxd_fakes: Fakes, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    flaky, steady = await hxd_fakes(2)
    flaky.responder = lambda q: "error_500"
    settings = hxd_settings(flaky.url, steady.url, failures_before_rest=2, rest_s=60.0, max_retries=3)
    pool = pool_for(settings, hxd_clock)
    try:
        # Sequential asks: each would pick flaky (listed first) while it is healthy.
        outcomes = [await pool.ask(f"问题{i}：悟空有几种变身？") for i in range(6)]
        assert {o.kind for o in outcomes} == {"answered"}
        assert {o.server for o in outcomes} == {steady.url}
        assert flaky.requests == 2, "rested after 2 failures in a row, then left alone"
        stats = pool.stats()[flaky.url]
        assert stats["resting_for_s"] > 0 and "HTTP 500" in stats["last_error"]

        flaky.responder = None  # repaired during its rest
        hxd_clock.advance(61.0)
        back = await pool.ask("休息之后的问题：悟空的师父是谁？")
        assert (back.kind, back.server) == ("answered", flaky.url)
    finally:
        await pool.aclose()


async def test_refused_connections_rest_the_server_and_others_answer(
    hxd_fake: FakeHuixiangdou, hxd_dead_url: str, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    pool = pool_for(hxd_settings(hxd_dead_url, hxd_fake.url, failures_before_rest=1), hxd_clock)
    try:
        outcomes = [await pool.ask(f"问题{i}：天命人是谁？") for i in range(3)]
        stats = pool.stats()
    finally:
        await pool.aclose()
    assert [o.kind for o in outcomes] == ["answered"] * 3
    assert outcomes[0].attempts == 2 and outcomes[1].attempts == 1
    assert stats[hxd_dead_url]["failures"] == 1
    assert stats[hxd_dead_url]["last_error"].startswith("connection refused")


async def test_servers_down_when_every_server_rests_names_the_urls_and_does_not_spin(
    hxd_fake: FakeHuixiangdou, hxd_dead_url: str, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    hxd_fake.responder = lambda q: "error_500"
    settings = hxd_settings(hxd_dead_url, hxd_fake.url, failures_before_rest=1, max_retries=5)
    pool = pool_for(settings, hxd_clock)
    try:
        with pytest.raises(ServersDown) as err:
            await pool.ask(Q)
        assert hxd_fake.requests == 1 and len(hxd_clock.sleeps) == 1
        # While all rest, further asks fail at once without touching the servers.
        with pytest.raises(ServersDown):
            await pool.ask("另一个问题：悟空是谁？")
        assert hxd_fake.requests == 1 and len(hxd_clock.sleeps) == 1
    finally:
        await pool.aclose()
    message = str(err.value)
    assert hxd_dead_url in message and hxd_fake.url in message
    assert START_COMMAND in message


async def test_waiting_asks_learn_that_every_server_went_down(
    hxd_fakes: Fakes, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    # Asks queued behind a busy server must not wait forever once it rests.
    gate = asyncio.Event()
    (fake,) = await hxd_fakes(1, gate=gate, responder=lambda q: "error_500")
    pool = pool_for(hxd_settings(fake.url, failures_before_rest=1, max_retries=0), hxd_clock)
    try:
        first = asyncio.create_task(pool.ask("第一个问题：悟空"))
        await reach(fake, 1)
        queued = [asyncio.create_task(pool.ask(f"排队的问题{i}：悟空")) for i in range(3)]
        gate.set()
        # Its failure put the only server to rest: it waits with the others, not written off.
        with pytest.raises(ServersDown, match="HTTP 500"):
            await first
        for t in queued:
            with pytest.raises(ServersDown):
                await asyncio.wait_for(t, 10)
    finally:
        await pool.aclose()
    assert fake.requests == 1


async def test_servers_down_says_when_to_try_again_until_the_down_timeout(
    hxd_fakes: Fakes, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    (fake,) = await hxd_fakes(1, responder=lambda q: "error_500")
    settings = hxd_settings(fake.url, failures_before_rest=1, max_retries=0, rest_s=600, recheck_s=20,
                            down_timeout_s=50)
    pool = pool_for(settings, hxd_clock)

    async def down() -> float | None:
        with pytest.raises(ServersDown) as err:
            await pool.ask(Q)
        return err.value.retry_in

    try:
        # t=0: the only server fails and rests, checked every 20 s; the
        # question waits with the others (it is not to blame).
        assert await down() == pytest.approx(20), "until the next check"
        assert fake.requests == 1
        hxd_clock.advance(20)
        assert await down() == pytest.approx(20)  # t=20: the check fails
        hxd_clock.advance(20)
        assert await down() == pytest.approx(10), "no longer than the down timeout leaves"  # t=40
        assert fake.requests == 3
        hxd_clock.advance(10)
        assert await down() is None, "50 s without an answer: waiting is no use"
        assert fake.requests == 3

        fake.responder = None  # an answer ends the outage: its clock starts again
        hxd_clock.advance(10)
        assert (await pool.ask(Q)).kind == "answered"  # t=60: the check answers
        fake.responder = lambda q: "error_500"
        assert await down() == pytest.approx(20)
    finally:
        await pool.aclose()


# ------------------------------------------------------------ probe


async def test_probe_reports_ready_servers(hxd_fakes: Fakes, hxd_settings: Settings) -> None:
    a, b = await hxd_fakes(2)
    pool = pool_for(hxd_settings(a.url, b.url))
    try:
        message = await pool.probe()
    finally:
        await pool.aclose()
    assert message == f"2 of 2 HuixiangDou servers up: {a.url}, {b.url}"


async def test_probe_names_the_missing_server_and_rests_it(
    hxd_fake: FakeHuixiangdou, hxd_dead_url: str, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    pool = pool_for(hxd_settings(hxd_fake.url, hxd_dead_url), hxd_clock)
    try:
        message = await pool.probe()
        outcome = await pool.ask(Q)
        stats = pool.stats()
    finally:
        await pool.aclose()
    assert message.startswith(f"1 of 2 HuixiangDou servers up: {hxd_fake.url}; not up: ")
    assert f"{hxd_dead_url} (connection refused" in message
    assert outcome.server == hxd_fake.url and outcome.attempts == 1
    assert stats[hxd_dead_url]["resting_for_s"] > 0 and stats[hxd_dead_url]["failures"] == 0


async def test_probe_with_no_server_says_how_to_start_huixiangdou(
    hxd_dead_url: str, hxd_settings: Settings
) -> None:
    other = hxd_dead_url.rsplit(":", 1)[0] + ":1"
    pool = pool_for(hxd_settings(hxd_dead_url, other))
    try:
        with pytest.raises(ServersDown) as err:
            await pool.probe()
    finally:
        await pool.aclose()
    message = str(err.value)
    assert hxd_dead_url in message and other in message
    assert START_COMMAND in message and "[huixiangdou] urls" in message


# ------------------------------------------------------------ subprocess


@pytest.mark.slow
async def test_fake_runs_as_a_subprocess_and_prints_its_url(hxd_settings: Settings) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.huixiangdou_server", "--port", "0", "--latency", "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        pool = pool_for(hxd_settings(url))
        try:
            assert (await pool.probe()).startswith("1 of 1")
            assert (await pool.ask(Q)).answer == default_answer(Q)
        finally:
            await pool.aclose()
    finally:
        proc.terminate()
        await proc.wait()
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("openapi", "reason"),
    [
        (web.json_response({"openapi": "3.1.0", "paths": {"/v1/chat/completions": {}}}),
         "no /huixiangdou_inference route: not a HuixiangDou server?"),
        (web.Response(status=404, text="Not Found"), "HTTP 404"),
    ],
    ids=["other-fastapi-app", "no-openapi"],
)
async def test_probe_tells_a_server_that_is_not_huixiangdou(
    hxd_settings: Settings, openapi: web.Response, reason: str
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return openapi

    app = web.Application()
    app.router.add_get("/openapi.json", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    pool = pool_for(hxd_settings(url))
    try:
        with pytest.raises(ServersDown, match=re.escape(f"{url} ({reason})")):
            await pool.probe()
    finally:
        await pool.aclose()
        await runner.cleanup()


# ------------------------------------------------------------ busy servers


async def test_every_endpoint_of_the_fake_waits_while_an_inference_runs(
    hxd_fakes: Fakes,
) -> None:
    # Fidelity: the 2024 server blocks its event loop while it answers.
    (fake,) = await hxd_fakes(1, hold=asyncio.Event())
    async with aiohttp.ClientSession() as s:
        answering = asyncio.create_task(s.post(fake.url + "/huixiangdou_inference", json={"text": Q}))
        await reach(fake, 1)
        waiting = [
            asyncio.create_task(s.get(fake.url + "/openapi.json")),
            asyncio.create_task(s.post(fake.url + "/huixiangdou_stream", json={"text": Q})),
            asyncio.create_task(s.post(fake.url + "/huixiangdou_inference", json={"text": Q})),
        ]
        await asyncio.wait_for(fake.wait_blocked(3), 10)
        assert not any(t.done() for t in waiting)
        assert fake.hold is not None
        fake.hold.set()
        responses = await asyncio.wait_for(asyncio.gather(answering, *waiting), 10)
        assert [r.status for r in responses] == [200, 200, 200, 200]
        for r in responses:
            r.release()


async def test_probe_waits_for_a_busy_server_says_why_and_counts_it_up(
    hxd_fakes: Fakes, hxd_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    (fake,) = await hxd_fakes(1, hold=asyncio.Event())
    pool = pool_for(hxd_settings(fake.url))
    pool.busy_notice_s = 0.0
    try:
        async with aiohttp.ClientSession() as s:
            answering = asyncio.create_task(s.post(fake.url + "/huixiangdou_inference", json={"text": Q}))
            await reach(fake, 1)
            probe = asyncio.create_task(pool.probe())
            await asyncio.wait_for(fake.wait_blocked(1), 10)  # the GET waits behind the answer
            assert not probe.done()
            assert fake.hold is not None
            fake.hold.set()
            message = await asyncio.wait_for(probe, 10)
            (await answering).release()
    finally:
        await pool.aclose()
    assert message.startswith(f"1 of 1 HuixiangDou servers up: {fake.url} (busy: GET /openapi.json answered after")
    assert f"HuixiangDou at {fake.url} accepted the connection" in caplog.text
    assert "busy answering" in caplog.text and "timeout_s" in caplog.text
    assert pool.stats()[fake.url]["resting_until"] is None


async def test_a_server_busy_past_the_answer_timeout_is_up_not_absent(
    hxd_fakes: Fakes, hxd_settings: Settings
) -> None:
    (fake,) = await hxd_fakes(1, hold=asyncio.Event())
    pool = pool_for(hxd_settings(fake.url, timeout_s=0.2))
    try:
        async with aiohttp.ClientSession() as s:
            answering = asyncio.create_task(s.post(fake.url + "/huixiangdou_inference", json={"text": Q}))
            await reach(fake, 1)
            message = await asyncio.wait_for(pool.probe(), 10)
            assert fake.hold is not None
            fake.hold.set()
            (await answering).release()
    finally:
        await pool.aclose()
    assert message == f"1 of 1 HuixiangDou servers up: {fake.url} (busy: GET /openapi.json unanswered after 0.2s)"
    assert pool.stats()[fake.url]["resting_until"] is None


# ------------------------------------------------------------ the LLM behind the server


@pytest.mark.parametrize("endpoint", ["inference", "stream"])
@pytest.mark.parametrize("release", ["2024-09", "2024-10"])
async def test_an_outage_of_the_servers_llm_is_retried_then_servers_down_never_skipped(
    hxd_fake: FakeHuixiangdou, hxd_settings: Settings, hxd_clock: HxdClock, release: str, endpoint: str
) -> None:
    hxd_fake.llm_down = release
    settings = hxd_settings(hxd_fake.url, endpoint=endpoint, max_retries=5, recheck_s=7.0)
    pool = pool_for(settings, hxd_clock)
    try:
        with pytest.raises(ServersDown) as err:
            await pool.ask(Q)
        assert hxd_fake.counts[Q] == 3  # retried with backoff until the server rested
        assert len(hxd_clock.sleeps) == 2
        message = str(err.value)
        assert "the LLM behind it does not" in message and "[llm] section" in message
        assert "config.ini" in message and "remote_api_key" in message
        assert err.value.retry_in == pytest.approx(7.0)

        # The LLM comes back: the next check answers and ends the rest at once.
        hxd_fake.llm_down = None
        hxd_clock.advance(7.0)
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert (outcome.kind, outcome.answer) == ("answered", default_answer(Q))
    assert pool.stats()[hxd_fake.url]["resting_until"] is None


async def test_one_outage_answer_then_a_real_one_is_an_answer(
    hxd_fake: FakeHuixiangdou, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    hxd_fake.script[Q] = ["outage_2024_09", "answered"]
    pool = pool_for(hxd_settings(hxd_fake.url), hxd_clock)
    try:
        outcome = await pool.ask(Q)
    finally:
        await pool.aclose()
    assert (outcome.kind, outcome.attempts) == ("answered", 2)


@pytest.mark.parametrize(("time_scale", "threshold", "kind"), [(0.0, 2.0, "down"), (0.5, 0.1, "skipped")])
async def test_a_rejection_faster_than_any_judgement_is_an_outage_a_real_one_is_skipped(
    hxd_fakes: Fakes, hxd_settings: Settings, hxd_clock: HxdClock, time_scale: float, threshold: float,
    kind: str,
) -> None:
    # A real "not a question" takes an LLM call (0.4-1 s; here x0.5: 0.2-0.5 s).
    # Without the debug mark, only its speed tells an outage (time_scale 0: instant).
    # Thresholds far from both speeds: a loaded machine slows the round trip, not the rule.
    (fake,) = await hxd_fakes(1, time_scale=time_scale, script={Q: "not_question"})
    pool = pool_for(hxd_settings(fake.url, instant_rejection_s=threshold), hxd_clock)
    try:
        if kind == "down":
            with pytest.raises(ServersDown, match="faster than its LLM can judge"):
                await pool.ask(Q)
        else:
            outcome = await pool.ask(Q)
            assert (outcome.kind, outcome.state) == ("skipped", STATES["not_question"])
    finally:
        await pool.aclose()


async def test_while_every_server_rests_one_question_checks_them_every_recheck_s(
    hxd_fakes: Fakes, hxd_dead_url: str, hxd_settings: Settings, hxd_clock: HxdClock
) -> None:
    (fake,) = await hxd_fakes(1, responder=lambda q: "error_500")
    settings = hxd_settings(fake.url, failures_before_rest=1, max_retries=0, rest_s=600.0, recheck_s=5.0)
    pool = pool_for(settings, hxd_clock)
    try:
        with pytest.raises(ServersDown):
            await pool.ask(Q)
        hxd_clock.advance(4.0)
        with pytest.raises(ServersDown) as early:  # not due yet: the server is not touched
            await pool.ask(Q)
        assert fake.requests == 1 and early.value.retry_in == pytest.approx(1.0)
        hxd_clock.advance(1.0)
        with pytest.raises(ServersDown):  # the check fails: the next is 5 s on
            await pool.ask(Q)
        assert fake.requests == 2
        fake.responder = None
        hxd_clock.advance(5.0)
        outcome = await pool.ask(Q)  # long before rest_s is over
    finally:
        await pool.aclose()
    assert outcome.kind == "answered" and fake.requests == 3


# ------------------------------------------------------------ the fake is the real server


async def test_fake_inference_body_is_raw_utf8_json_and_the_client_reads_it(
    hxd_fake: FakeHuixiangdou, hxd_settings: Settings
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(hxd_fake.url + "/huixiangdou_inference", json={"text": Q}) as r:
            assert r.headers["Content-Type"] == "application/json"
            raw = await r.read()
    assert not raw.isascii() and default_answer(Q).encode() in raw  # not \uXXXX-escaped
    pool = pool_for(hxd_settings(hxd_fake.url))
    try:
        assert (await pool.ask(Q)).answer == default_answer(Q)
    finally:
        await pool.aclose()


@pytest.mark.parametrize(
    ("body", "headers", "detail"),
    [
        (b'{"text": "q"}', {"Content-Type": "text/plain"},
         {"type": "model_attributes_type", "loc": ["body"], "input": '{"text": "q"}'}),
        (b'{"text": "q"}', {},
         {"type": "model_attributes_type", "loc": ["body"], "input": '{"text": "q"}'}),
        (b'{x', {"Content-Type": "application/json"},
         {"type": "json_invalid", "loc": ["body", 1], "msg": "JSON decode error", "input": {},
          "ctx": {"error": "Expecting property name enclosed in double quotes"}}),
    ],
    ids=["text-plain", "no-content-type", "bad-json"],
)
async def test_fake_answers_422_exactly_as_fastapi(
    hxd_fake: FakeHuixiangdou, body: bytes, headers: dict[str, str], detail: dict[str, object]
) -> None:
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as s:
        async with s.post(hxd_fake.url + "/huixiangdou_inference", data=body, headers=headers) as r:
            assert r.status == 422
            got = (await r.json())["detail"][0]
    assert {k: got[k] for k in detail} == detail


async def test_fake_404_and_405_are_fastapis_json(hxd_fake: FakeHuixiangdou) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(hxd_fake.url + "/huixiangdou_inference") as r:
            assert (r.status, await r.json()) == (405, {"detail": "Method Not Allowed"})
        async with s.get(hxd_fake.url + "/nowhere") as r:
            assert (r.status, await r.json()) == (404, {"detail": "Not Found"})


async def inference_body(fake: FakeHuixiangdou, text: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(fake.url + "/huixiangdou_inference", json={"text": text}) as r:
            return await r.json()  # type: ignore[no-any-return]


async def test_fake_state_sequences_are_the_real_ones(hxd_fake: FakeHuixiangdou) -> None:
    hxd_fake.script.update({"vetoed问题是什么？": "vetoed", "safety问题是什么？": "safety",
                            "not_question问题": "not_question", "irrelevant问题？": "irrelevant_material"})
    vetoed = (await inference_body(hxd_fake, "vetoed问题是什么？"))["step"]
    assert [s["state"] for s in vetoed] == ["Init state", "success", *["Irrelevant answer."] * 3]
    assert len({s["response"] for s in vetoed[1:]}) == 1 and vetoed[1]["response"], "vetoes keep the text"
    safety = (await inference_body(hxd_fake, "safety问题是什么？"))["step"]
    assert [s["state"] for s in safety[2:]] == [STATES["prohibited"]] * 3
    assert all(s["response"] == safety[1]["response"] for s in safety[2:])
    rejected = await inference_body(hxd_fake, "not_question问题")
    assert rejected["step"] == [{"state": "query is not a question", "response": "", "refs": []}]
    assert rejected["debug"]["PreprocNode_is_question"]["relation"], "a real judgement has the model's text"
    assert (await inference_body(hxd_fake, "短"))["step"] == [
        {"state": "Query length too short", "response": "", "refs": []}]
    assert (await inference_body(hxd_fake, ""))["debug"] == {}
    irrelevant = (await inference_body(hxd_fake, "irrelevant问题？"))["step"]
    assert irrelevant == [{"state": "Init state", "response": "", "refs": []}] * 4


@pytest.mark.parametrize("release", ["2024-09", "2024-10"])
async def test_fake_outage_signatures_are_the_observed_ones(hxd_fake: FakeHuixiangdou, release: str) -> None:
    hxd_fake.llm_down = release
    body = await inference_body(hxd_fake, Q)
    if release == "2024-09":
        assert body["step"] == [{"state": "query is not a question", "response": "", "refs": []}]
        assert body["debug"]["PreprocNode_is_question"] == {
            "input": Q, "default": 3, "relation": "", "throttle": 6, "output": 3}
    else:
        assert [(s["state"], s["response"]) for s in body["step"]] == [
            ("Init state", ""), ("success", ""), *[("Irrelevant answer.", "")] * 3]
    assert hxd_fake.delays == [(f"outage_{release.replace('-', '_')}", 0.0)], "at once"


async def test_fake_takes_a_live_servers_times_scaled(hxd_fake: FakeHuixiangdou) -> None:
    hxd_fake.time_scale = 0.002
    hxd_fake.script.update({f"拒绝{i}问题": "not_question" for i in range(20)})
    for i in range(20):
        await inference_body(hxd_fake, f"回答{i}的问题是什么？")
        await inference_body(hxd_fake, f"拒绝{i}问题")
    answered = [d for s, d in hxd_fake.delays if s == "answered"]
    rejected = [d for s, d in hxd_fake.delays if s == "not_question"]
    assert all(0.006 <= d <= 0.012 for d in answered)  # 3-6 s
    assert all(0.0008 <= d <= 0.002 for d in rejected)  # 0.4-1 s


async def test_fake_stream_is_one_chunk_per_cumulative_document_then_a_tail(
    hxd_fakes: Fakes, hxd_settings: Settings
) -> None:
    (fake,) = await hxd_fakes(1, time_scale=0.25)  # answer 0.75-1.5 s, the tail 0.5 s of it
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    piece = b""
    async with aiohttp.ClientSession() as s:
        async with s.post(fake.url + "/huixiangdou_stream", json={"text": Q}) as r:
            assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            async for data, end_of_http_chunk in r.content.iter_chunks():
                piece += data
                if end_of_http_chunk and piece:
                    chunks.append(piece)
                    piece = b""
                    last_document = loop.time()
            ended = loop.time()
    docs = [json.loads(c) for c in chunks]  # each HTTP chunk is one whole document
    assert [len(d["step"]) for d in docs] == [1, 2]
    assert all(13_000 <= len(c) <= 26_000 for c in chunks)
    # The safety checks run after the last document and send nothing (a lower bound:
    # the fake sleeps 0.5 s there, and a slow reader only shortens what it sees).
    assert ended - last_document >= 0.25
    inference = await inference_body(fake, Q)
    assert docs[-1]["step"] == inference["step"]
    assert "SecurityNode" in inference["debug"] and "SecurityNode" not in docs[-1]["debug"]
    pool = pool_for(hxd_settings(fake.url, endpoint="stream"))
    try:
        assert (await pool.ask(Q)).answer == default_answer(Q)
    finally:
        await pool.aclose()
