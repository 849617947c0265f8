"""Progress: rates over a sliding window, the plain line, its schedule on an
injected clock, the live display, and following a real run."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from pipeline.qa.graph import Graph, RunStats
from pipeline.services.llm import Usage
from pipeline.outputs.progress import Progress, RateWindow, Sample, eta_seconds, format_line, render
from pipeline.qa.stage import run_qa
from pipeline.store.view import state_from_rows
from pipeline.settings import Settings, parse_settings
from tests.fakes.huixiangdou_server import FakeHuixiangdou
from tests.fakes.llm_fixtures import FAKE_KEY
from tests.fakes.llm_server import FakeLLM
from tests.test_qa import make_settings


@pytest.mark.parametrize(
    ("points", "name", "expected"),
    [
        ([], "calls", 0.0),
        ([(0, 0)], "calls", 0.0),
        ([(0, 0), (30, 10)], "calls", 20.0),  # a half-full window: extrapolated to a minute
        ([(0, 0), (60, 30)], "calls", 30.0),
        # Only the last minute counts: a burst at the start falls out of the window.
        ([(0, 0), (10, 100), (70, 100), (130, 130)], "calls", 30.0),
        ([(0, 0), (60, 30)], "missing", 0.0),
    ],
)
def test_rate_window_per_minute(points: list[tuple[float, float]], name: str, expected: float) -> None:
    window = RateWindow(60.0)
    for t, v in points:
        window.add(t, {"calls": v})
    assert window.per_minute(name) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([(0, 0), (2, 120)], 120.0),  # 120 tokens in the first two seconds: 120 of the minute, not 3,600
        ([(0, 0), (30, 10)], 10.0),
        ([(0, 0), (60, 30)], 30.0),
        ([(0, 0), (10, 100), (70, 100), (130, 130)], 30.0),
    ],
)
def test_usage_against_a_per_minute_limit_is_what_was_used_not_extrapolated(
    points: list[tuple[float, float]], expected: float
) -> None:
    window = RateWindow(60.0, extrapolate=False)
    for t, v in points:
        window.add(t, {"tokens": v})
    assert window.per_minute("tokens") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("remaining", "rate", "expected"),
    [(None, 10.0, None), (0, 0.0, 0.0), (10, 0.0, None), (10, 5.0, 120.0), (3, 60.0, 3.0)],
)
def test_eta(remaining: int | None, rate: float, expected: float | None) -> None:
    assert eta_seconds(remaining, rate) == expected


SAMPLE = Sample(
    t=100.0, elapsed=3725.0, accepted={"甲": 3, "乙": 1}, target={"甲": 4, "乙": 4},
    outcomes={"answered": 2, "skipped": 1}, in_flight=2, llm_calls=5,
    prompt_tokens=1200, completion_tokens=340, cost=0.00123, remaining=5,
)


@pytest.mark.parametrize(
    ("eta", "tail"),
    [(None, "eta ?"), (95.0, "eta 1m35s"), (7260.0, "eta 2h01m")],
)
def test_format_line(eta: float | None, tail: str) -> None:
    assert format_line(SAMPLE, 12.4, 3400.0, (60, 100000), eta) == (
        "progress 1h02m | questions 4/8 | answered 2 skipped 1 vetoed 0 failed 0 refused 0 rejected 0 | "
        "in_flight 2 | rpm 12/60 tpm 3400/100000 | tokens 1200+340 cost 0.0012 | " + tail
    )


def test_render_shows_aspects_limits_spend_and_servers() -> None:
    sample = Sample(
        t=1.0, elapsed=10.0, accepted={"甲": 3}, target={"甲": 4}, outcomes={"vetoed": 1}, in_flight=1,
        llm_calls=2, prompt_tokens=10, completion_tokens=5, cost=0.5, remaining=3,
        servers={"http://127.0.0.1:1": {"in_flight": 1, "done": 7, "failures": 2, "resting_for_s": 0.0}},
    )
    out = io.StringIO()
    Console(file=out, width=120, force_terminal=False).print(render(sample, 30.0, 900.0, (60, 1000), None))
    text = out.getvalue()
    assert "甲" in text and "3/4" in text
    assert "vetoed 1" in text and "in flight 1" in text
    assert "30/60 requests/min, 900/1000 tokens/min" in text
    assert "10+5 tokens, cost 0.5000" in text
    assert "http://127.0.0.1:1: up, in flight 1, done 7, failures 2" in text


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_graph(settings: Settings) -> Any:
    """The parts of a Graph the display reads."""
    stats = RunStats()
    stats.target.update({a: settings.questions.per_aspect for a in settings.questions.aspects})
    return SimpleNamespace(stats=stats, llm=SimpleNamespace(usage=Usage(1.0, 2.0)),
                           answerer=SimpleNamespace(stats=dict), state=state_from_rows(settings, {}), passages=[])


def small_settings(interval: float = 30.0) -> Settings:
    return parse_settings({"questions": {"aspects": ["甲", "乙"], "per_aspect": 4},
                           "run": {"progress_interval_s": interval},
                           "llm": {"rpm": 60, "tpm": 1000}}, environ={})


def test_a_line_every_interval_with_rates_from_the_counters() -> None:
    s = small_settings(30.0)
    clock, lines = Clock(), []
    progress = Progress(s, clock=clock, emit=lines.append)
    assert progress.tick() is None, "nothing to show before the graph exists"
    graph = fake_graph(s)
    progress.attach(graph)

    clock.now = 10.0
    assert progress.tick() is None, "not due yet"
    graph.llm.usage.calls, graph.llm.usage.prompt_tokens = 10, 400
    graph.stats.accepted["甲"] = 4
    graph.stats.outcomes.update({"answered": 3, "failed": 1})
    clock.now = 30.0
    line = progress.tick()
    assert line is not None and lines == [line]
    # 10 calls and 400 tokens in the 30 s since attach: what the provider counts in this minute.
    assert line.startswith("progress 0m30s | questions 4/8 |")
    assert "answered 3" in line and "failed 1" in line
    assert "rpm 10/60 tpm 400/1000" in line
    # 8 conversations planned, 4 decided at 8/min: 30 s left.
    assert line.endswith("eta 0m30s")
    clock.now = 45.0
    assert progress.tick() is None
    clock.now = 60.0
    assert progress.tick() is not None and len(lines) == 2


def test_the_eta_holds_still_while_every_server_is_down_and_resumes_at_the_old_pace() -> None:
    s = small_settings(30.0)
    clock, lines = Clock(), []
    progress = Progress(s, clock=clock, emit=lines.append)
    graph = fake_graph(s)
    graph.servers_down_since = None
    progress.attach(graph)
    graph.stats.outcomes["answered"] = 4
    clock.now = 30.0
    assert (line := progress.tick()) is not None and line.endswith("eta 0m30s")
    graph.servers_down_since = 30.0  # an outage: nothing is answered for 5 minutes
    for minute in range(1, 6):
        clock.now = 30.0 + 60 * minute
        assert (line := progress.tick()) is not None and line.endswith("eta 0m30s"), line
    graph.servers_down_since = None  # back: the outage is left out of the pace
    clock.now = 390.0
    graph.stats.outcomes["answered"] = 6
    assert (line := progress.tick()) is not None
    # 6 in the 30 s spent answering (not in 390 s): 2 left at 12 a minute.
    assert line.endswith("eta 0m10s"), line


async def test_the_timer_ticks_at_the_interval_on_the_injected_clock() -> None:
    s = small_settings(30.0)
    clock, lines, delays = Clock(), [], []
    enough = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(lines) >= 3:
            enough.set()
            await asyncio.Future()  # park until cancelled
        clock.now += delay

    async with Progress(s, clock=clock, sleep=sleep, emit=lines.append) as progress:
        progress.attach(fake_graph(s))
        await enough.wait()
    assert set(delays) == {30.0}
    assert len(lines) == 3 and all(line.startswith("progress ") for line in lines)


async def test_live_display_ends_showing_the_final_counts() -> None:
    s = small_settings(30.0)
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True)

    async def sleep(delay: float) -> None:
        await asyncio.Future()  # no refresh before the end: the exit shows the counts

    async with Progress(s, live=True, console=console, sleep=sleep, emit=lambda _: None) as progress:
        graph = fake_graph(s)
        progress.attach(graph)
        graph.stats.outcomes["skipped"] = 5
    assert "skipped 5" in out.getvalue()


async def test_following_a_real_run(tmp_path: Path) -> None:
    clock, lines = Clock(), []
    graphs: list[Graph] = []
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",)) as llm, FakeHuixiangdou(seed=3) as hxd:
        s = make_settings(tmp_path, llm, [hxd])
        progress = Progress(s, clock=clock, emit=lines.append)

        def attach(graph: Graph) -> None:
            graphs.append(graph)
            progress.attach(graph)

        result = await run_qa(s, install_signals=False, on_graph=attach)
    clock.now = s.run.progress_interval_s
    line = progress.tick()
    assert line is not None
    outcomes = Counter(result.stats["outcomes"])
    assert f"questions {result.stats['accepted']}/{result.stats['target']}" in line
    assert f"answered {outcomes['answered']} skipped {outcomes['skipped']}" in line
    assert f"tokens {result.usage['prompt_tokens']}+{result.usage['completion_tokens']}" in line
    assert "in_flight 0" in line and "eta 0m00s" in line
