"""pytest fixtures for the fake LLM API. Enable with
``pytest_plugins = ["tests.fakes.llm_fixtures"]`` in ``tests/conftest.py``."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from pipeline.services.llm import LLMClient
from pipeline.settings import LLMSettings, Secret
from tests.fakes.llm_server import FakeLLM

__all__ = ["FAKE_KEY", "FAKE_KEY_ENV", "RecordingSleep", "fake_llm", "llm_client", "llm_settings",
           "recording_sleep"]

# Recognisable, so a test can prove it never leaks into logs or errors.
FAKE_KEY = "sk-LEAKCHECK-5f3a9c2e7b1d"
FAKE_KEY_ENV = "FAKE_LLM_API_KEY"


class RecordingSleep:
    """An injected ``sleep`` that returns at once and remembers each delay;
    ``on_sleep`` lets a test move a fake clock by the same amount."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.on_sleep: list[object] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        for hook in self.on_sleep:
            hook(seconds)  # type: ignore[operator]


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLM]:
    """A started fake LLM API on 127.0.0.1 that accepts :data:`FAKE_KEY`."""
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model", "other-model")) as fake:
        yield fake


@pytest.fixture
def llm_settings(fake_llm: FakeLLM) -> LLMSettings:
    """Settings pointing at the fake, limits out of the way, short timeouts."""
    return LLMSettings(
        base_url=fake_llm.base_url,
        model="fake-model",
        api_key_env=FAKE_KEY_ENV,
        api_key=Secret(FAKE_KEY),
        rpm=1_000_000,
        tpm=1_000_000_000,
        concurrency=8,
        timeout_s=5.0,
        max_retries=3,
        backoff_base_s=0.5,
        backoff_max_s=8.0,
        price_input_per_m=2.0,
        price_output_per_m=8.0,
    )


@pytest.fixture
def recording_sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
async def llm_client(llm_settings: LLMSettings, recording_sleep: RecordingSleep) -> AsyncIterator[LLMClient]:
    """A real client on the fake, whose backoff sleeps are recorded, not slept."""
    async with LLMClient(llm_settings, sleep=recording_sleep, rng=random.Random(0)) as client:
        yield client
