"""Shared fixtures. Fake services live in tests/fakes and bind only 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from tests.fakes.loops import LOOP_FACTORIES

pytest_plugins = ["tests.fakes.llm_fixtures", "tests.fakes.hxd_fixtures"]


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every loop for tests marked with ``tests.fakes.loops.BOTH_LOOPS``; asyncio's own for the rest."""
    if item.get_closest_marker("both_loops") is not None:
        return LOOP_FACTORIES
    return {"asyncio": asyncio.new_event_loop}
