"""The event loops the in-process QA graph tests run on: asyncio's own, and
uvloop, which production uses when installed (``run.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

__all__ = ["BOTH_LOOPS", "LOOP_FACTORIES"]

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
    pass
else:
    LOOP_FACTORIES["uvloop"] = uvloop.new_event_loop

# A module's ``pytestmark``: each of its async tests runs once per loop
# (tests/conftest.py reads it; sync tests ignore it).
BOTH_LOOPS = pytest.mark.both_loops
