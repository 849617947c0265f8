"""Live progress of a QA run: a rich display on a terminal, plain lines elsewhere.

The display pulls: :class:`Progress` is given the graph once it is built
(``run_qa(on_graph=progress.attach)``) and reads its counters, the LLM
client's :class:`~pipeline.services.llm.Usage` and the answer backend's ``stats()`` on
its own timer, so the graph holds no display code. Every ``[run]
progress_interval_s`` it logs one plain, grep-able line (``progress ...``) to
the ``pipeline.outputs.progress`` logger: on a terminal ``run.py`` keeps those lines
out of the console (the live display shows the same) and in ``qa.log``.

Pure parts, tested without a loop: :class:`Sample` (the counters at one
moment), :class:`RateWindow` (RPM and TPM over a sliding window),
:func:`format_line`, :func:`eta_seconds`, :func:`render`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.store.schema import ANSWER_KINDS
from pipeline.outputs.dry_run import plan_run
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.qa.graph import Graph

__all__ = ["LINE_LOGGER", "Progress", "RateWindow", "Sample", "eta_seconds", "format_line", "render",
           "take_sample"]

LINE_LOGGER = "pipeline.outputs.progress"
log = logging.getLogger(LINE_LOGGER)

# RPM and TPM are what the provider counts: requests and tokens in the last minute.
RATE_WINDOW_S = 60.0
# ETA over a longer window: answers arrive in bursts as servers free up.
ETA_WINDOW_S = 300.0
LIVE_REFRESH_S = 1.0


@dataclass(frozen=True, slots=True)
class Sample:
    """The run's counters at one moment (``t`` on the monotonic clock)."""

    t: float
    elapsed: float
    accepted: Mapping[str, int]
    target: Mapping[str, int]
    outcomes: Mapping[str, int]
    in_flight: int
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    remaining: int | None = None  # RAG requests still to make, when known
    servers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    passages: tuple[int, int] = (0, 0)  # passages of the corpus asked (all runs), selected
    corpus_questions: int = 0  # questions written from them this run

    @property
    def answers(self) -> int:
        return sum(self.outcomes.values())

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RateWindow:
    """Per-minute rates of cumulative counters over the last ``window_s`` seconds.

    Fed samples ``(t, {name: cumulative value})``; a rate is the growth from
    the oldest sample still in the window to the newest, per minute. Early in
    a run the samples span less than ``window_s``: with ``extrapolate`` (an
    ETA's rate) the growth is scaled up to a minute; without (requests and
    tokens against the provider's per-minute limits) it is what was used, as
    the provider counts it: 120 tokens in the first two seconds are 120 of the
    minute's limit, not 3,600."""

    def __init__(self, window_s: float = RATE_WINDOW_S, *, extrapolate: bool = True) -> None:
        self.window_s = window_s
        self.extrapolate = extrapolate
        self._points: deque[tuple[float, dict[str, float]]] = deque()

    def add(self, t: float, values: Mapping[str, float]) -> None:
        self._points.append((t, dict(values)))
        # Keep one point at or before the window's start, so the span is full.
        while len(self._points) > 2 and self._points[1][0] <= t - self.window_s:
            self._points.popleft()

    def skip(self, seconds: float) -> None:
        """Leave ``seconds`` just passed out of every rate, as if they had not
        been (a pause whose standstill says nothing of the pace to come)."""
        self._points = deque((t + seconds, v) for t, v in self._points)

    def per_minute(self, name: str) -> float:
        if len(self._points) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self._points[0], self._points[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0
        if not self.extrapolate:
            span = max(span, self.window_s)
        return (v1.get(name, 0.0) - v0.get(name, 0.0)) * 60.0 / span


def take_sample(graph: Graph, now: float, started: float, remaining_at_start: int | None) -> Sample:
    """Read the graph's live counters (no awaits: consistent within one loop turn);
    ``now`` and ``started`` are on the same clock."""
    stats, usage = graph.stats, graph.llm.usage
    servers = graph.answerer.stats()
    outcomes = dict(stats.outcomes)
    remaining = None
    if remaining_at_start is not None:
        remaining = max(0, remaining_at_start - sum(outcomes.values()))
    return Sample(
        t=now,
        elapsed=now - started,
        accepted=dict(stats.accepted),
        target=dict(stats.target),
        outcomes=outcomes,
        in_flight=stats.in_flight,
        llm_calls=usage.calls,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost=usage.cost(),
        remaining=remaining,
        servers=servers if isinstance(servers, dict) else {},
        passages=(stats.passages[0], stats.passages[1]),
        corpus_questions=stats.corpus_questions,
    )


def eta_seconds(remaining: int | None, answers_per_minute: float) -> float | None:
    """Seconds to finish ``remaining`` answers at the recent rate; None when unknown."""
    if remaining is None:
        return None
    if remaining == 0:
        return 0.0
    if answers_per_minute <= 0:
        return None
    return remaining * 60.0 / answers_per_minute


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_line(sample: Sample, rpm: float, tpm: float, limits: tuple[int, int], eta: float | None) -> str:
    """One plain progress line, ``key value`` pairs separated by `` | ``."""
    accepted = sum(sample.accepted.values())
    target = sum(sample.target.values())
    answers = " ".join(f"{k} {sample.outcomes.get(k, 0)}" for k in ANSWER_KINDS)
    return (
        f"progress {_hms(sample.elapsed)} | questions {accepted}/{target} | "
        + (f"passages {sample.passages[0]}/{sample.passages[1]} questions {sample.corpus_questions} | "
           if sample.passages[1] else "")
        + f"{answers} | "
        f"in_flight {sample.in_flight} | rpm {rpm:.0f}/{limits[0]} tpm {tpm:.0f}/{limits[1]} | "
        f"tokens {sample.prompt_tokens}+{sample.completion_tokens} cost {sample.cost:.4f} | "
        f"eta {_hms(eta)}"
    )


def render(sample: Sample, rpm: float, tpm: float, limits: tuple[int, int], eta: float | None) -> RenderableType:
    """The live display: a table of aspects, then answers, limits, spend and ETA."""
    aspects = Table(title="QA run", expand=False, show_edge=False)
    aspects.add_column("aspect")
    aspects.add_column("questions", justify="right")
    for aspect, target in sample.target.items():
        done = sample.accepted.get(aspect, 0)
        aspects.add_row(aspect, f"{done}/{target}", style="green" if done >= target else None)
    answers = "  ".join(f"{k} {sample.outcomes.get(k, 0)}" for k in ANSWER_KINDS)
    lines = [
        *([Text(f"corpus: {sample.passages[0]}/{sample.passages[1]} passages asked, "
                f"{sample.corpus_questions} questions this run")] if sample.passages[1] else []),
        Text(f"answers: {answers}   in flight {sample.in_flight}"),
        Text(f"LLM: {rpm:.0f}/{limits[0]} requests/min, {tpm:.0f}/{limits[1]} tokens/min; "
             f"{sample.llm_calls} calls"),
        Text(f"spent: {sample.prompt_tokens}+{sample.completion_tokens} tokens, cost {sample.cost:.4f}"),
        Text(f"elapsed {_hms(sample.elapsed)}   ETA {_hms(eta)}"),
    ]
    for url, st in sample.servers.items():
        state = f"resting {st.get('resting_for_s', 0):.0f}s" if st.get("resting_for_s") else "up"
        lines.append(Text(f"{url}: {state}, in flight {st.get('in_flight', 0)}, done {st.get('done', 0)}, "
                          f"failures {st.get('failures', 0)}"))
    return Group(aspects, *lines)


class Progress:
    """Progress for one ``qa`` run; use as ``async with`` around :func:`run_qa`
    and pass :meth:`attach` as its ``on_graph``.

    ``live``: a rich display on ``console`` (refreshed every second) in
    addition to the plain lines every ``progress_interval_s``. ``clock``,
    ``sleep`` and ``emit`` are seams for tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        live: bool = False,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.interval = settings.run.progress_interval_s
        self.limits = (settings.llm.rpm, settings.llm.tpm)
        self._clock = clock
        self._sleep = sleep
        self._emit = emit if emit is not None else log.info
        self._console = console
        self._live_wanted = live
        self._live: Live | None = None
        self._graph: Graph | None = None
        self._remaining: int | None = None
        self._rates = RateWindow(RATE_WINDOW_S, extrapolate=False)
        self._answers = RateWindow(ETA_WINDOW_S)
        self._last_line: float | None = None
        self._started = 0.0
        # While every RAG server is down: since when, and the ETA before it.
        self._paused: float | None = None
        self._eta: float | None = None
        self._task: asyncio.Task[None] | None = None

    def attach(self, graph: Graph) -> None:
        """Start following ``graph`` (``run_qa``'s ``on_graph``)."""
        self._graph = graph
        self._remaining = plan_run(self.settings, graph.state,
                                   passages=[p.id for p in graph.passages]).rag_requests
        now = self._clock()
        self._last_line = self._started = now
        # A first point at the start, so the first rates count from here.
        usage = graph.llm.usage
        self._rates.add(now, {"calls": usage.calls, "tokens": usage.prompt_tokens + usage.completion_tokens})
        self._answers.add(now, {"answers": sum(graph.stats.outcomes.values())})

    def tick(self) -> str | None:
        """Take a sample, refresh the display, and emit a plain line when one is
        due; return the line emitted, if any."""
        if self._graph is None:
            return None
        now = self._clock()
        sample = take_sample(self._graph, now, self._started, self._remaining)
        self._rates.add(now, {"calls": sample.llm_calls, "tokens": sample.tokens})
        rpm, tpm = self._rates.per_minute("calls"), self._rates.per_minute("tokens")
        down_since = getattr(self._graph, "servers_down_since", None)
        if down_since is not None:
            # Every server is down: no answer comes, and the pace after it is
            # the pace before it, so the ETA holds still instead of climbing.
            if self._paused is None:
                self._paused = min(now, down_since)
            eta = self._eta
        else:
            if self._paused is not None:
                self._answers.skip(now - self._paused)
                self._paused = None
            self._answers.add(now, {"answers": sample.answers})
            eta = self._eta = eta_seconds(sample.remaining, self._answers.per_minute("answers"))
        if self._live is not None:
            self._live.update(render(sample, rpm, tpm, self.limits, eta), refresh=True)
        if self._last_line is not None and now - self._last_line >= self.interval:
            self._last_line = now
            line = format_line(sample, rpm, tpm, self.limits, eta)
            self._emit(line)
            return line
        return None

    async def _run(self) -> None:
        period = min(LIVE_REFRESH_S, self.interval) if self._live is not None else self.interval
        while True:
            await self._sleep(period)
            self.tick()

    async def __aenter__(self) -> Progress:
        if self._live_wanted:
            self._live = Live(console=self._console, auto_refresh=False, transient=False)
            self._live.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            # gather, not a suppressed await: a cancellation of *our* caller must still propagate.
            await asyncio.gather(self._task, return_exceptions=True)
        if self._live is not None:
            with contextlib.suppress(Exception):
                self.tick()  # the final counts stay on screen
            self._live.stop()
