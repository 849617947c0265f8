"""Coalescer: items handed in within a window run as one batch, in order;
and the QA graph's screening through it keeps one-at-a-time semantics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.qa.coalesce import Coalescer
from pipeline.qa.graph import Graph
from pipeline.settings import parse_settings
from pipeline.store.resume import derive_state


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [i.upper() for i in items]


@pytest.mark.parametrize("window", [0.0, 0.01])
async def test_items_handed_in_together_run_as_one_batch_in_order(window: float) -> None:
    run = Recorder()
    together = Coalescer(run, window)
    results = await asyncio.gather(*(together(x) for x in ["a", "b", "c"]))
    assert results == ["A", "B", "C"]
    assert run.batches == [["a", "b", "c"]] and together.batches == 1
    assert await together("d") == "D"
    assert run.batches[-1] == ["d"], "a later item starts a batch of its own"


async def test_the_window_gathers_items_from_callers_a_little_apart() -> None:
    run = Recorder()
    together = Coalescer(run, 0.05)

    async def later(item: str, delay: float) -> str:
        await asyncio.sleep(delay)
        return await together(item)

    assert await asyncio.gather(later("a", 0), later("b", 0.001), later("c", 0.002)) == ["A", "B", "C"]
    assert run.batches == [["a", "b", "c"]]


async def test_a_failing_batch_fails_every_caller_of_it_and_no_other() -> None:
    run = Recorder(fail_on="b")
    together = Coalescer(run)
    outcomes = await asyncio.gather(together("a"), together("b"), return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert await together("c") == "C"


async def test_a_cancelled_caller_leaves_its_item_in_the_batch() -> None:
    run = Recorder()
    together = Coalescer(run, 0.01)
    gone = asyncio.ensure_future(together("a"))
    kept = together("b")
    gone.cancel()
    assert await kept == "B"
    assert run.batches == [["a", "b"]]


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window_s must be >= 0"):
        Coalescer(Recorder(), -1)


async def test_graph_screening_of_a_batch_of_replies_is_as_if_one_at_a_time(tmp_path: Path) -> None:
    settings = parse_settings({"paths": {"data_dir": str(tmp_path), "out_dir": str(tmp_path / "out")},
                               "questions": {"aspects": ["甲", "乙"], "max_chars": 60}},
                              source="test", environ={})
    state = derive_state([], [], [], aspects=["甲", "乙"], min_turns=1, max_turns=1, max_answer_attempts=3)
    graph = Graph(settings, state, None, None, None, workers=1,  # type: ignore[arg-type]
                  earlier_questions=lambda: iter(()))
    first = ["天命人的武器是什么？", "黑风山在哪一回出现？", "第三个问题是什么呢？"]
    second = ["黑风山在哪一回出现？", "天命人的武器是什么呢？", "火照之灵会几种法术？", "土地庙有什么用？"]
    fresh = graph._screen_batch([(first, 2), (second, 5)])
    # The first reply keeps two (its third is over its need, yet remembered);
    # the second loses an exact and a near duplicate of the first's.
    assert fresh == [first[:2], second[2:]]
    assert graph.stats.dropped["over_target"] == 1
    assert graph.stats.dropped["duplicate"] == 1
    assert graph.stats.dropped["near_duplicate"] == 1
    assert graph._screen_batch([(["第三个问题是什么呢？"], 1)]) == [[]], "the over-need question was remembered"
