"""Fixtures for HuixiangDou tests: fake servers, a dead URL, settings, a fake clock.

Register with ``pytest_plugins = ["tests.fakes.hxd_fixtures"]`` in the root
conftest. Names start with ``hxd_`` so they cannot collide with the LLM fakes.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pipeline.settings import HuixiangdouSettings
from tests.fakes.huixiangdou_server import FakeHuixiangdou

__all__ = [
    "HxdClock",
    "hxd_clock",
    "hxd_dead_url",
    "hxd_fake",
    "hxd_fakes",
    "hxd_settings",
]


class HxdClock:
    """A monotonic clock and a sleep that only moves it: cool-downs without waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def hxd_clock() -> HxdClock:
    return HxdClock()


@pytest.fixture
async def hxd_fake() -> AsyncIterator[FakeHuixiangdou]:
    """One fake HuixiangDou server with default behaviour (answers everything)."""
    async with FakeHuixiangdou() as fake:
        yield fake


@pytest.fixture
async def hxd_fakes() -> AsyncIterator[Callable[..., Awaitable[list[FakeHuixiangdou]]]]:
    """Factory: ``await hxd_fakes(n, **kwargs)`` starts ``n`` fakes, stopped after the test."""
    started: list[FakeHuixiangdou] = []

    async def start(n: int = 1, **kwargs: Any) -> list[FakeHuixiangdou]:
        fakes = [FakeHuixiangdou(**kwargs) for _ in range(n)]
        for f in fakes:
            await f.start()
            started.append(f)
        return fakes

    yield start
    for f in started:
        await f.stop()


@pytest.fixture
def hxd_dead_url() -> str:
    """A 127.0.0.1 URL where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hxd_settings() -> Callable[..., HuixiangdouSettings]:
    """Factory: settings for the given URLs with fast retries; keywords override."""

    def make(*urls: str, **overrides: Any) -> HuixiangdouSettings:
        base = HuixiangdouSettings(
            urls=tuple(urls), timeout_s=30.0, max_retries=2, backoff_base_s=0.5,
            failures_before_rest=3, rest_s=60.0,
            # The fake's rejections take its scaled times (under a millisecond by
            # default), which would all read as instant: tests of that rule set it.
            instant_rejection_s=0.0,
        )
        return dataclasses.replace(base, **overrides)

    return make
