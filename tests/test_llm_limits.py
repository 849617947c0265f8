"""Requests- and tokens-per-minute limits, on an event loop whose clock jumps.

aiolimiter reads ``loop.time()``, so these tests run on a loop whose time
is virtual: whenever every task is waiting on a timer, the clock jumps to
the next timer instead of sleeping. A minute of limiting takes no real time.
The client is driven through an in-memory transport (no sockets), so no
real I/O can be overtaken by a jump.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import openai
import pytest

from pipeline.services.llm import RPM_MARGIN, LLMClient, TokenBudget
from pipeline.settings import LLMSettings, Secret

T = TypeVar("T")

# The HTTP library the installed SDK is built on (httpx, or httpx2 in newer releases).
httpx_lib: Any = importlib.import_module(type(openai.DEFAULT_CONNECTION_LIMITS).__module__.split(".")[0])


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    loop: VirtualClockLoop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if timeout == 0:
            # Time passes a little with every turn of the loop, as on a real
            # clock: aiolimiter's float level can sit 1e-16 short of free and
            # re-arm a zero-length timer, which a frozen clock would never end.
            self.loop.advance(1e-9)
        if ready or timeout == 0:
            return ready
        # A short real wait lets worker threads (the SDK asks for platform
        # details in one) report back before time jumps.
        ready = super().select(None if timeout is None else min(timeout, 0.05))
        if not ready and timeout is not None:
            self.loop.advance(timeout)
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now = 0.0
        selector = _JumpingSelector()
        selector.loop = self
        super().__init__(selector)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def now() -> float:
    return asyncio.get_running_loop().time()


# -- the budget alone --------------------------------------------------------------


def test_rpm_paces_requests_without_a_burst() -> None:
    async def main() -> list[float]:
        budget = TokenBudget(rpm=2, tpm=1_000_000)
        times = []
        for _ in range(4):
            await budget.acquire(10)
            times.append(now())
        return times

    # 2 per minute: one every 30 s stretched by the margin, never two at once,
    # so no 60 s window (a provider's count) ever holds more than 2.
    step = 30.0 * (1 + RPM_MARGIN)
    assert run_virtual(main) == pytest.approx([0.0, step, 2 * step, 3 * step], abs=1e-3)


def test_tpm_waits_for_enough_tokens_to_drain() -> None:
    async def main() -> list[float]:
        budget = TokenBudget(rpm=1000, tpm=1000)
        times = []
        for _ in range(3):
            await budget.acquire(400)
            times.append(now())
        return times

    # After 800 of 1000, the third 400 needs 200 to drain: 200 / (1000/60 s) = 12 s.
    # (The second waits only for the request pacing, 60 / 1000 s.)
    assert run_virtual(main) == pytest.approx([0.0, 0.0, 12.0], abs=0.1)


@pytest.mark.parametrize(("estimate", "capacity", "taken"), [(50, 100, 50), (100, 100, 100), (5000, 100, 100)])
def test_an_estimate_above_capacity_is_clamped_instead_of_raising(estimate: int, capacity: int, taken: int) -> None:
    async def main() -> int:
        return await TokenBudget(rpm=10, tpm=capacity).acquire(estimate)

    assert run_virtual(main) == taken


def test_usage_above_the_estimate_is_paid_by_the_next_call() -> None:
    async def main() -> tuple[float, int, int]:
        budget = TokenBudget(rpm=1000, tpm=1000)
        own = await budget.acquire(100)
        budget.settle(own, 1000)         # the call really used 1000: 900 owed
        start = now()
        own = await budget.acquire(100)  # 100 held + 100 own + 900 owed > 1000: wait
        waited = now() - start
        start = now()
        await budget.acquire(1)  # the debt was paid once: no second wait for it
        return waited, own, now() - start

    waited, own, again = run_virtual(main)
    # 1100 would exceed 1000 by 100: 100 / (1000/60 s) = 6 s.
    assert waited == pytest.approx(6.0) and own == 100
    assert again == pytest.approx(0.06, abs=0.01), "only the request pacing, 60 / 1000 s"


def test_usage_below_the_estimate_gives_nothing_back() -> None:
    async def main() -> float:
        budget = TokenBudget(rpm=1000, tpm=1000)
        taken = await budget.acquire(900)
        budget.settle(taken, 10)  # used 10: the 890 unused stay counted
        start = now()
        await budget.acquire(200)
        return now() - start

    # 900 + 200 exceeds 1000 by 100: 100 / (1000/60 s) = 6 s.
    assert run_virtual(main) == pytest.approx(6.0, abs=0.1)


# -- the client, through an in-memory transport ----------------------------------------


def _client(rpm: int, tpm: int, reported: int, seen: list[tuple[float, Any]]) -> LLMClient:
    async def handler(request: httpx_lib.Request) -> httpx_lib.Response:
        seen.append((now(), json.loads(request.content)))
        return httpx_lib.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": reported, "completion_tokens": 1, "total_tokens": reported + 1},
        })

    settings = LLMSettings(base_url="http://127.0.0.1:9/v1", model="m", api_key=Secret("sk-x"),
                           rpm=rpm, tpm=tpm, max_tokens=10, concurrency=8)
    http = httpx_lib.AsyncClient(transport=httpx_lib.MockTransport(handler))
    return LLMClient(settings, http_client=http)


def test_the_client_spaces_calls_by_its_rpm() -> None:
    seen: list[tuple[float, Any]] = []

    async def main() -> None:
        async with _client(rpm=2, tpm=1_000_000, reported=5, seen=seen) as client:
            await asyncio.gather(*(client.chat([{"role": "user", "content": "hi"}]) for _ in range(3)))

    run_virtual(main)
    times = sorted(t for t, _ in seen)
    assert times[1] - times[0] == pytest.approx(30.3, abs=0.5)
    assert times[2] - times[0] == pytest.approx(60.6, abs=0.5)


def test_the_client_charges_reported_usage_to_its_tpm() -> None:
    seen: list[tuple[float, Any]] = []

    async def main() -> None:
        # Each call is estimated at ~20 tokens but the server reports 1000:
        # a 1000-token-per-minute budget must then allow about one call a minute.
        async with _client(rpm=1000, tpm=1000, reported=999, seen=seen) as client:
            for _ in range(3):
                await client.chat([{"role": "user", "content": "hi"}])
            assert client.usage.prompt_tokens == 3 * 999

    run_virtual(main)
    times = [t for t, _ in seen]
    assert times[1] - times[0] < 2.0          # the first overrun is paid by the second call
    assert times[2] - times[0] >= 60.0        # without the correction all three go at once
