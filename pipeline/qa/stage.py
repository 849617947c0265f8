"""The QA stage driver: lock the output folder, resume from the ledgers, run the
graph against the LLM and the answer backend, and always leave a usable dataset.

I/O lives here; the graph holds the scheduling, ``pipeline.store.resume`` the resume
plan and ``pipeline.outputs.dataset`` the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.outputs.dataset import conversations_with_sources, provenance_path, write_dataset_with_sources
from pipeline.errors import InputError, OutputError
from pipeline.qa.graph import Graph, StopReason
from pipeline.services.backend import BACKENDS, Backend, open_answerer
from pipeline.qa.passages import PassagePlan, plan_passages
from pipeline.store.answers import READ_BLOCK, AnswerIndex
from pipeline.store.layout import has_string_field, question_block, question_texts
from pipeline.store.ledger import LedgerWriter, RunLock, append_row, gc_paused, iter_blocks, read_ledger, repair_tail
from pipeline.store.schema import is_followup
from pipeline.store.view import Ledgers, open_ledgers, state_from_ledgers
from pipeline.services.llm import LLMClient
from pipeline.services.answerer import Answerer
from pipeline.jsonl import remove_stale_temps
from pipeline.outputs.report import REPORT_JSON, REPORT_MD, build_report, short_advice, short_summary, write_report
from pipeline.settings import Settings
from pipeline.store.shape import Scope, change_line, shape_of
from pipeline.store.resume import RunState, ledger_paths, plan_builder

__all__ = [
    "BuildResult", "build_outputs",
    "QAResult", "earlier_questions", "load_state", "run_qa", "write_conversations",
]

log = logging.getLogger(__name__)

DATASET_NAME = "conversations.jsonl"

# Bytes at the end of an old answer ledger read to tell which backend made it.
_TAIL_BYTES = 64 * 1024

# Read block of the question ledger when the near-duplicate index is seeded
# from it: ~7,000 questions, one worker-thread call of Deduper.seed each.
_SEED_BLOCK = 1024 * 1024


@dataclass(slots=True)
class QAResult:
    # complete, short, quota, interrupted, fatal, refused, servers_down or crashed
    # (run.py maps it to the exit code)
    status: str
    detail: str
    conversations: int
    stats: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    # The command that resumes this run, with the options the user gave.
    resume: str = "python run.py qa"
    # Answered conversations the current settings leave out of the dataset, or cut, by why.
    left_out: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """The closing summary: how it ended, what it made, what it cost."""
        outcomes = self.stats.get("outcomes", {})
        parts = [
            short_summary(self.stats.get("short", {})) if self.status == "short" else f"qa {self.status}",
            f"questions {self.stats.get('accepted', 0)}/{self.stats.get('target', 0)}",
            *([f"passages {self.stats['passages'][0]}/{self.stats['passages'][1]} asked, "
               f"{self.stats.get('corpus_questions', 0)} questions from them"]
              if self.stats.get("passages", [0, 0])[1] else []),
            "answers " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) if outcomes else "answers 0",
            f"conversations {self.conversations}" + (
                " (left out or cut by the current settings: "
                + ", ".join(f"{why} {n}" for why, n in self.left_out.items()) + "; see report.md)"
                if self.left_out else ""),
            f"tokens {int(self.usage.get('prompt_tokens', 0))}+{int(self.usage.get('completion_tokens', 0))}",
            f"cost {self.usage.get('cost', 0.0):.4f}",
        ]
        text = "; ".join(parts)
        if self.detail:
            text += f"\n{self.detail}"
        asked, selected = self.stats.get("passages", [0, 0])
        if asked < selected and self.status in ("complete", "short"):
            text += (f"\n{selected - asked} of {selected} passages not asked: their calls failed "
                     f"(see qa.log); run `{self.resume}` again to ask them")
        if self.status in ("quota", "interrupted", "servers_down", "crashed", "refused"):
            text += f"\nrun `{self.resume}` again to resume where it stopped"
        if self.status == "short":
            text += "\n" + short_advice(self.stats.get("short", {}), self.resume)
        return text


def load_state(
    settings: Settings, *, repair: bool, block_size: int = READ_BLOCK, retry: Iterable[str] = (),
    retry_short: bool = False,
) -> RunState:
    """Derive the resume plan from the ledgers (cutting a torn last line when
    ``repair``; the readers cut one anyway, as the next append would glue onto it).
    ``retry``: answer kinds whose turns are asked again (``qa --retry``).

    Streamed, not loaded: the answer ledger is indexed by byte offset
    (:class:`~pipeline.store.answers.AnswerIndex`), question rows pass through
    a block at a time, and only what the plan keeps is read back: the history
    of conversations still pending. Rows held as dicts cost ~1.5 GB and 14 s
    for a million questions and answers.

    Blocks of rows in the form the pipeline writes them are scanned as raw
    bytes (:mod:`pipeline.store.layout`) and the rest parsed whole, so the
    plan is :func:`~pipeline.store.resume.derive_state`'s either way.
    ``block_size`` is the read block (a seam for tests: small blocks mix the
    two paths). The plan records how much of the question ledger it read,
    for :func:`earlier_questions`. ``retry_short``: no aspect counts as given
    up for good (``qa --retry-short``)."""
    paths = ledger_paths(settings.state_dir)
    if repair:
        for path in paths.values():
            repair_tail(path)
    events = read_ledger(paths["events"])
    # The GC is paused throughout (start-up, on the main thread, before the
    # loop runs): the scans allocate millions of short-lived tuples, each
    # pass of it walks them all, and nothing here makes a cycle.
    with gc_paused(), AnswerIndex.of_file(paths["answers"], block_size=block_size) as answers:
        builder = plan_builder(settings, answers, events, retry=retry)
        read = 0
        for block in iter_blocks(paths["questions"], block_size=block_size):
            columns = question_block(block.data, block.end)
            if columns is not None:
                builder.add_questions(columns)
            else:
                for row in block.rows():
                    builder.add(row)
            read = block.offset + block.end
        state = builder.finish(events, retry_short=retry_short)
    state.questions_read = read
    return state


def earlier_questions(path: Path, until: int, *, block_size: int = _SEED_BLOCK) -> Iterator[list[str]]:
    """The question texts of the question ledger ``path`` up to byte
    ``until`` (:attr:`RunState.questions_read`), a read block at a time (each
    block's first turns, then its follow-ups): the accepted questions of
    earlier runs, which the plan only counts, and their follow-ups, which a
    new question must not repeat either. Rows a run appends meanwhile are not
    read, nor the file repaired."""
    for block in iter_blocks(path, block_size=block_size, until=until):
        texts = question_texts(block.data, block.end)
        if texts is None:
            rows = block.rows()
            texts = [r["text"] for r in rows if not is_followup(r)] + [r["text"] for r in rows if is_followup(r)]
        yield texts


def write_conversations(settings: Settings, ledgers: Ledgers | None = None,
                        left_out: Counter[str] | None = None) -> int:
    """Rebuild ``conversations.jsonl`` from the ledgers, atomically, under the
    CURRENT settings: their system prompt, at most ``max_turns`` turns, only
    the questions their :class:`~pipeline.store.shape.Scope` keeps (``left_out``
    counts what is not in, as :func:`~pipeline.outputs.dataset.conversations_with_sources` says).

    ``ledgers``: :func:`~pipeline.store.view.open_ledgers` of the run's state
    folder, when the caller has them open (the end of a run shares them with
    the report: one pass over the answer ledger serves both); else they are
    opened here. The answer ledger is indexed by byte offset, not loaded, and
    only answered rows are read back, as each record is written."""
    if ledgers is None:
        with open_ledgers(settings.state_dir) as opened:
            return write_conversations(settings, opened, left_out)
    c = settings.conversations
    questions = (r for r in ledgers.questions() if not is_followup(r))
    pairs = conversations_with_sources(questions, ledgers.answers.answered_row, c.system_prompt,
                                       c.dataset_min_turns, c.max_turns, scope=Scope.of(settings, ledgers.events),
                                       left_out=left_out)
    return write_dataset_with_sources(settings.out_dir / DATASET_NAME, pairs)


def earlier_backend(state: RunState, answers: Path) -> Backend | None:
    """The backend that made the answers already recorded: the last run's
    (its ``run_start`` event says), or, for ledgers older than that field,
    what the newest answer rows' ``server`` says ("local", else a HuixiangDou
    URL). None when no answer is recorded."""
    try:
        size = answers.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    if state.last_backend in BACKENDS:
        return state.last_backend  # type: ignore[return-value]
    with answers.open("rb") as f:
        f.seek(max(0, size - _TAIL_BYTES))
        tail = f.read()
    return "local" if has_string_field(tail, "server", "local") else "huixiangdou"


def plan_corpus(settings: Settings) -> PassagePlan | None:
    """The passages to write questions from, when ``[questions] source`` asks
    for them (None for "aspects"); logged as it is the run's first cost."""
    if settings.questions.source == "aspects":
        return None
    started = time.monotonic()
    plan = plan_passages(settings)
    if not plan.selected_ids and settings.questions.source == "corpus":
        raise InputError(
            f"{settings.data_dir}: no passage to write questions from (no readable text in files matching "
            f"{', '.join(settings.pretrain.patterns)}); set [paths] data_dir, or [questions] source = \"aspects\""
        )
    log.info("passages: %d selected of %d in %d files (%.1f s)", len(plan.selected_ids), plan.total,
             len(plan.files), time.monotonic() - started)
    return plan


async def run_qa(
    settings: Settings,
    *,
    install_signals: bool = True,
    on_graph: Callable[[Graph], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    retry: Iterable[str] = (),
    retry_short: bool = False,
) -> QAResult:
    """Run (or resume) the QA stage to completion or to a clean stop.
    ``on_graph`` receives the graph once built (for a display, or a test's stop);
    ``clock`` and ``sleep`` time every wait of the run's services and graph (seams for tests);
    ``retry``: answer kinds (``skipped``, ``vetoed``, ...) whose questions are asked again;
    ``retry_short`` reopens every aspect given up short of its target."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(settings.out_dir):
        state = load_state(settings, repair=True, retry=retry, retry_short=retry_short)
        changed = change_line(state.last_shape, shape_of(settings), made=state.total_questions()
                              + sum(state.set_aside.values()), set_aside=state.set_aside)
        if changed:
            log.warning("%s", changed)
        passages = await asyncio.to_thread(plan_corpus, settings)
        async with LLMClient(settings.llm, clock=clock, sleep=sleep) as llm:
            # Fail before anything is paid for when a service is misconfigured.
            await llm.probe()
            earlier = earlier_backend(state, ledger_paths(settings.state_dir)["answers"])
            answerer, choice = await open_answerer(settings, llm, earlier=earlier,
                                                   clock=clock, sleep=sleep)
            log.info("%s", choice.line())
            try:
                return await _run_graph(
                    settings, state, llm, answerer, install_signals, on_graph,
                    passages, clock, sleep,
                )
            finally:
                await answerer.aclose()


async def _run_graph(
    settings: Settings,
    state: RunState,
    llm: LLMClient,
    answerer: Answerer,
    install_signals: bool,
    on_graph: Callable[[Graph], None] | None,
    passages: PassagePlan | None,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[Any]],
) -> QAResult:
    described = await answerer.probe()
    log.info("%s", described)

    writer = LedgerWriter(ledger_paths(settings.state_dir), fsync=settings.run.fsync,
                          fsync_interval_s=settings.run.fsync_interval_s)
    writer_task = asyncio.create_task(writer.run())
    earlier = functools.partial(earlier_questions, ledger_paths(settings.state_dir)["questions"],
                                state.questions_read)
    graph = Graph(settings, state, llm, answerer, writer, earlier_questions=earlier,
                  passages=passages.passages if passages else (), clock=clock, sleep=sleep)
    if on_graph is not None:
        on_graph(graph)
    status: str = "crashed"
    started = time.time()
    await writer.record("events", {"event": "run_start", "pid": os.getpid(), "time": started,
                                   "questions_before": state.total_questions(),
                                   "seq_from": state.next_seq, "shape": shape_of(settings),
                                   "backend": answerer.backend})
    if passages is not None:
        await writer.record("events", passages.event())
    main = asyncio.current_task()
    restore = _install_signal_handlers(graph, main) if install_signals else (lambda: None)
    try:
        reason: StopReason = await graph.run()
        status = reason
    except asyncio.CancelledError:
        status = "interrupted"
        # The first signal already set a detail; keep it and say the grace period was cut short.
        cut = "cancelled at once by a second signal"
        graph.stop_detail = f"{graph.stop_detail}; {cut}" if graph.stop_detail else cut
        if main is not None:
            main.uncancel()
    finally:
        restore()
        graph.release()
        end = {
            "event": "run_end",
            "status": status,
            "detail": graph.stop_detail,
            "time": time.time(),
            "seconds": round(time.time() - started, 1),
            "stats": graph.stats.snapshot(),
            "usage": llm.usage.snapshot(),
        }
        count: int | None = None
        left_out: Counter[str] = Counter()
        with contextlib.ExitStack() as closing:
            ledgers: Ledgers | None = None
            try:
                try:
                    # Every row is on file (appended by its caller); the writer's
                    # task only syncs. Opened once for both outputs: one pass
                    # over the answer ledger.
                    ledgers = closing.enter_context(open_ledgers(settings.state_dir))
                    count = _write_dataset(settings, ledgers, left_out)
                except BaseException as exc:
                    end["detail"] = "; ".join(filter(None, [end["detail"], f"{DATASET_NAME} not rebuilt: {exc}"]))
                    if status == "complete":
                        end["status"] = "fatal"
                    raise
                finally:
                    # The run's end is recorded once its dataset is in place, so a
                    # run killed while writing it reads as one that never ended.
                    end["conversations"] = count
                    with contextlib.suppress(Exception):
                        await asyncio.shield(writer.record("events", end))
                    writer.close()
                    await asyncio.shield(writer_task)
            finally:
                # Also after a failure: the report says how far it got.
                if ledgers is not None:
                    ledgers.events = [*ledgers.events, end]
                _write_report(settings, _run_summary(graph, llm, status, end, state), count, ledgers,
                              dict(left_out.most_common()))
    return QAResult(
        status=status,
        detail=graph.stop_detail,
        conversations=count or 0,
        stats=graph.stats.snapshot(),
        usage=llm.usage.snapshot(),
        resume=settings.command("qa"),
        left_out=dict(left_out.most_common()),
    )


def _write_dataset(settings: Settings, ledgers: Ledgers, left_out: Counter[str]) -> int:
    """:func:`write_conversations`, with an error a person can act on."""
    try:
        return write_conversations(settings, ledgers, left_out)
    except OSError as exc:
        path = settings.out_dir / DATASET_NAME
        raise OutputError(
            f"cannot write {path}: {exc.strerror or exc}. Every answer recorded so far is kept in "
            f"the ledgers under {settings.state_dir} and the previous {DATASET_NAME} is unchanged; "
            f"free some space, then run `{settings.command('build')}` to rebuild it (no service needed)"
        ) from exc


def _run_summary(
    graph: Graph, llm: LLMClient, status: str, end: dict[str, Any], state: RunState
) -> dict[str, Any]:
    stats = graph.stats
    return {
        "status": status,
        "detail": graph.stop_detail,
        "seconds": end["seconds"],
        "questions_new": max(0, sum(stats.accepted.values()) - sum(state.accepted.values()))
                         + stats.corpus_questions,
        "stats": end["stats"],
        "usage": end["usage"],
        "llm_seconds": list(llm.usage.latencies),
        "rag_seconds": stats.rag_seconds,
    }


def _write_report(settings: Settings, run: dict[str, Any] | None, conversations: int | None,
                  ledgers: Ledgers | None = None, left_out: dict[str, int] | None = None,
                  *, strict: bool = False) -> Path | None:
    """report.md and report.json, from ``ledgers`` when open (else opened
    here); returns report.md. At a run's end (not ``strict``) a failure is
    logged, never raised, so it cannot hide why the run ended."""
    try:
        with contextlib.ExitStack() as closing:
            if ledgers is None:
                ledgers = closing.enter_context(open_ledgers(settings.state_dir))
            # The answer ledger is an index, not rows: holding every row as a
            # dict cost ~2.9 KB a question here.
            state = state_from_ledgers(settings, ledgers)
            report = build_report(settings, ledgers, state, run, conversations=conversations,
                                  left_out=left_out)
        md, _ = write_report(settings.out_dir, report)
        log.info("run report: %s", md)
        return md
    except Exception as exc:
        if strict:
            raise
        # The report is a courtesy at a run's end; the dataset is what matters.
        log.warning("could not write the run report under %s: %s", settings.out_dir, exc)
        return None


# Files the QA stage replaces atomically under out_dir: `build` sweeps their
# temporary files a killed process left, and says so (every write also does).
_OUTPUTS = (DATASET_NAME, provenance_path(DATASET_NAME).name, REPORT_MD, REPORT_JSON)


@dataclass(slots=True)
class BuildResult:
    """What :func:`build_outputs` made."""

    conversations: int
    left_out: dict[str, int]
    report: Path
    removed: list[Path]

    def line(self) -> str:
        text = f"build: {DATASET_NAME} {self.conversations} conversations"
        if self.left_out:
            text += " (left out or cut by the current settings: " + ", ".join(
                f"{why} {n}" for why, n in self.left_out.items()) + ")"
        text += f"; report {self.report}"
        if self.removed:
            text += f"; removed {len(self.removed)} leftover temporary file(s): " + ", ".join(
                p.name for p in self.removed)
        return text


def build_outputs(settings: Settings) -> BuildResult:
    """``conversations.jsonl`` and the report from the ledgers alone, under the
    current settings: no service is called and no key is needed. Takes the run
    lock (refused while a run holds the folder), removes temporary files a
    killed write left, and records a ``build`` event once both are in place."""
    paths = ledger_paths(settings.state_dir)
    if not any(p.exists() for p in paths.values()):
        raise InputError(f"{settings.state_dir}: no ledgers to build from; run `{settings.command('qa')}` first")
    with RunLock(settings.out_dir):
        removed = remove_stale_temps(settings.out_dir, _OUTPUTS)
        left_out: Counter[str] = Counter()
        with open_ledgers(settings.state_dir) as ledgers:
            count = _write_dataset(settings, ledgers, left_out)
            report = _write_report(settings, None, count, ledgers, dict(left_out.most_common()), strict=True)
        assert report is not None
        append_row(paths["events"], {"event": "build", "time": time.time(), "conversations": count,
                                     "shape": shape_of(settings)})
    return BuildResult(count, dict(left_out.most_common()), report, removed)


def _install_signal_handlers(graph: Graph, main: asyncio.Task[Any] | None) -> Callable[[], None]:
    """First SIGINT/SIGTERM: two-phase stop. Second: cancel at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if not graph.stopping:
            log.warning("%s: finishing what is in flight (again to stop at once)", signame)
            graph.request_stop("interrupted", f"stopped by {signame}")
        elif main is not None:
            main.cancel()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)

    def restore() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return restore
