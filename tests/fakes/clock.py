"""Virtual time for code with ``clock`` and ``sleep`` seams (the QA graph, the
LLM client, the HuixiangDou pool): nothing waits for real.

Time moves only when the test says so: :meth:`FakeClock.advance` wakes every
sleeper whose deadline has passed; :meth:`FakeClock.sleeping` returns once
someone sleeps; :meth:`FakeClock.drive` runs a task to its end, jumping to the
next deadline whenever someone sleeps (any order a real network could produce).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any

__all__ = ["FakeClock"]


class FakeClock:
    """A monotonic clock (call it) with an async ``sleep`` on the same time line."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []  # every sleep asked for, in order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.slept.append(seconds)
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), future))
        self._notify()
        await future

    def pending(self) -> list[float]:
        """The deadlines of the sleepers still waiting, earliest first."""
        return sorted(d for d, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds`` and wake the sleepers now due."""
        self.now += seconds
        while self._sleepers and (self._sleepers[0][0] <= self.now or self._sleepers[0][2].done()):
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    async def sleeping(self, n: int = 1) -> None:
        """Return once at least ``n`` sleepers are waiting."""
        if len(self.pending()) >= n:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, future))
        await future

    async def drive(self, task: asyncio.Future[Any]) -> Any:
        """Run ``task`` to its end, jumping to the earliest deadline whenever someone sleeps."""
        while not task.done():
            someone = asyncio.ensure_future(self.sleeping())
            try:
                await asyncio.wait({task, someone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                someone.cancel()
            due = self.pending()
            if not task.done() and due:
                self.advance(max(0.0, due[0] - self.now))
        return task.result()

    def _notify(self) -> None:
        live = len(self.pending())
        keep = []
        for n, future in self._waiters:
            if future.done():
                continue
            if live >= n:
                future.set_result(None)
            else:
                keep.append((n, future))
        self._waiters = keep
