"""Which answer backend a run uses, and why: ``[rag] backend``.

``"huixiangdou"`` and ``"local"`` are what they say. ``"auto"`` (the default)
answers with HuixiangDou when a listed server is up and with the embedded
local backend otherwise, under one rule that keeps a dataset from mixing
backends behind the user's back:

    no answer recorded yet   -> HuixiangDou if any server accepts a TCP
                                connection (a busy 2024 server blocks every
                                HTTP request while it answers, but it does
                                accept: busy is up), else local
    earlier answers exist    -> the backend that made them (the last run's),
                                whatever is up now: a HuixiangDou run whose
                                servers are gone waits and stops as with
                                backend = "huixiangdou"; a local run stays
                                local when a server appears. The start line
                                says how to switch.

An explicit ``"huixiangdou"`` or ``"local"`` is obeyed even when earlier
answers came from the other backend; the start line then says the dataset
mixes both (every answer row records its backend, and the report counts each).

:func:`choose_backend` is the pure rule; :func:`open_answerer` probes, applies
it and builds the answerer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.services.answerer import Answerer
from pipeline.services.huixiangdou import HuixiangdouPool, accepts_connection
from pipeline.services.llm import LLMClient
from pipeline.settings import Settings

__all__ = ["BACKENDS", "Backend", "BackendChoice", "choose_backend", "open_answerer", "reachable_servers"]

Backend = Literal["huixiangdou", "local"]
BACKENDS: tuple[Backend, ...] = ("huixiangdou", "local")

# A TCP connect is answered by the kernel even while the server's event loop
# is blocked, so a few seconds tell "absent" from "busy" on any machine.
CONNECT_TIMEOUT_S = 3.0

_NAMES = {"huixiangdou": "HuixiangDou", "local": "the local backend"}


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The backend a run answers with and the one line that says why."""

    backend: Backend
    reason: str

    def line(self) -> str:
        return f"rag backend: {self.backend} ({self.reason})"


def choose_backend(
    configured: str,
    *,
    earlier: Backend | None,
    up: Sequence[str] | None,
    urls: Sequence[str],
    data_dir: str,
) -> BackendChoice:
    """Apply the module's rule. ``earlier``: the backend of the answers already
    recorded (None when there are none); ``up``: the HuixiangDou URLs that
    accept a connection (None when not probed: only ``auto`` with no earlier
    answers needs it)."""
    local_from = f"answering from {data_dir} with the local backend (BM25 passages + the LLM)"
    if configured in BACKENDS:
        backend: Backend = "huixiangdou" if configured == "huixiangdou" else "local"
        reason = f'[rag] backend = "{backend}"'
        if backend == "local":
            reason += f"; {local_from}"
        if earlier is not None and earlier != backend:
            reason += (f"; the answers already recorded came from {_NAMES[earlier]}: the dataset "
                       "mixes both backends (each row records its own; the report counts them)")
        return BackendChoice(backend, reason)
    if earlier == "huixiangdou":
        return BackendChoice("huixiangdou", (
            "auto keeps to HuixiangDou, which made the answers already recorded; "
            'to go on without it, set [rag] backend = "local"'))
    if earlier == "local":
        return BackendChoice("local", (
            f"auto keeps to the local backend, which made the answers already recorded; {local_from}; "
            'to switch to HuixiangDou, set [rag] backend = "huixiangdou"'))
    if up:
        return BackendChoice("huixiangdou", f"auto: HuixiangDou is up at {', '.join(up)}")
    where = ", ".join(urls) if urls else "no URL in [huixiangdou] urls"
    return BackendChoice("local", f"auto: no HuixiangDou server at {where}; {local_from}")


async def reachable_servers(urls: Sequence[str], *, timeout: float = CONNECT_TIMEOUT_S) -> list[str]:
    """The URLs whose server accepts a TCP connection (no HTTP request is
    sent: nothing queues behind a busy server)."""
    refused = await asyncio.gather(*(accepts_connection(u, timeout) for u in urls))
    return [u for u, why in zip(urls, refused) if why is None]


async def open_answerer(
    settings: Settings,
    llm: LLMClient,
    *,
    earlier: Backend | None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> tuple[Answerer, BackendChoice]:
    """The answerer of this run and the choice with its reason. Probes
    HuixiangDou only where the rule needs it.
    ``clock`` and ``sleep`` time the HuixiangDou pool's waits (seams for tests)."""
    hx = settings.huixiangdou
    up: list[str] | None = None
    if settings.rag.backend == "auto" and earlier is None:
        up = await reachable_servers(hx.urls)
    choice = choose_backend(settings.rag.backend, earlier=earlier, up=up, urls=hx.urls,
                            data_dir=str(settings.paths.data_dir))
    if choice.backend == "huixiangdou":
        return HuixiangdouPool(hx, clock=clock, sleep=sleep), choice
    # Imported here: jieba and bm25s cost start-up time the HuixiangDou path never needs.
    from pipeline.services.local_rag import LocalAnswerer

    return LocalAnswerer(settings, llm), choice
