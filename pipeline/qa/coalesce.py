"""Items handed in within a short window, run as one batch.

Some work costs far more per call than per item: the Deduper's numpy pass
over a batch of questions costs about the same for ten questions as for
forty, because in a busy event loop each of its array operations starts cold
(measured in the pipeline: ~35 us a question in calls of ten, ~9 us in
isolation). Under load, question producers finish LLM calls a few
milliseconds apart; each hands in its reply, the first one starts a short
window, and when it closes every reply handed in meanwhile is run in one
call, in the order they came. The producers then go on together, so the
next replies come in waves too, and the whole process works in fewer,
fuller turns of the event loop (overhead bench: 2,000 replies in 100
batches at 50 ms, CPU per question -14%). With replies seconds apart (a real
LLM) a batch holds a reply or a few, and the window only delays them by
``window_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``await coalescer(item)`` -> ``run(items)[i]``, where ``items`` are all
    the items handed in from the first of a batch until ``window_s`` later
    (0: until the end of the current loop turn), in order. ``run`` is
    synchronous and returns one result per item; if it raises, every caller
    of that batch gets the exception. ``batches`` counts the calls of ``run``.

    A caller cancelled while waiting does not take its item out of the
    batch: ``run`` still sees it, and its result is dropped."""

    def __init__(self, run: Callable[[list[T]], Sequence[R]], window_s: float = 0.0) -> None:
        if not window_s >= 0:
            raise ValueError(f"window_s must be >= 0, not {window_s!r}")
        self._run = run
        self.window_s = window_s
        self._items: list[T] = []
        self._waiters: list[asyncio.Future[R]] = []
        self.batches = 0

    def __call__(self, item: T) -> Awaitable[R]:
        loop = asyncio.get_running_loop()
        if not self._items:
            if self.window_s:
                loop.call_later(self.window_s, self._flush)
            else:
                loop.call_soon(self._flush)
        fut: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._waiters.append(fut)
        return fut

    def _flush(self) -> None:
        items, waiters = self._items, self._waiters
        self._items, self._waiters = [], []
        self.batches += 1
        try:
            results = self._run(items)
            if len(results) != len(items):
                raise RuntimeError(f"a batch of {len(items)} gave {len(results)} results")
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for fut, result in zip(waiters, results):
            if not fut.done():
                fut.set_result(result)
