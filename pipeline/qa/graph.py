"""The QA graph: aspects -> questions -> answers -> ledgers, in one TaskGroup.

    question producers (one per aspect, sharing the LLM client's limits)
          | record question row, then put on a bounded queue
          v
    answer workers (a fixed pool, one per answer slot of the backend)
          | ask the backend; gate; write the follow-up turns of multi-turn conversations
          v
    ledger writer (one task; rows are recorded shielded from cancellation)

End of input is a sentinel per worker, put once every producer has finished.
A stop (quota, signal, fatal error) is two-phase: producers stop asking, workers
finish what is in flight and drop what is queued (it is in the ledger and is
picked up by the next run); whatever is still busy after ``grace_s`` is cancelled.
From the moment a stop begins no LLM request leaves (:meth:`LLMClient.halt`);
a call that is not made raises :class:`Stopped`, which ends the producer or the
conversation that made it without recording anything: a stop is never a failed
turn. A cancellation is caught only to clean up, and goes on up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.qa.gate import compile_gate
from pipeline.errors import (
    ContentRefused,
    FatalServiceError,
    QuotaExhausted,
    RetryableError,
    ServersDown,
    ServiceError,
    Stopped,
    UnusableReply,
)
from pipeline.store.ledger import LedgerWriter
from pipeline.services.llm import LLMClient
from pipeline.services.answerer import Answerer, Outcome
from pipeline.services.replies import REFUSED, answer_proper
from pipeline.qa.questions import (
    followup_candidates,
    followup_messages,
    parse_question_list,
    passage_messages,
    question_id,
    question_messages,
    screen_question,
    screen_standalone,
    standalone_question,
)
from pipeline.qa.passages import Passage
from pipeline.qa.dedup import Deduper
from pipeline.settings import Settings
from pipeline.store.resume import SAMPLE, ConvPlan, RunState, target_turns
from pipeline.store.schema import answer_row, followup_row, question_row
from pipeline.store.shape import shape_id, shape_of

__all__ = ["Graph", "RunStats", "StopReason"]

log = logging.getLogger(__name__)

# Seconds between the run's usage rows in the event ledger at most (while
# usage changes): how stale `status` may show the tokens of a live run. About
# 7,000 short rows over a ten-hour run.
USAGE_EVERY_S = 5.0

StopReason = Literal["complete", "short", "quota", "interrupted", "servers_down", "refused", "fatal"]

# The answer-row state of a turn whose follow-up could not be written.
NO_FOLLOWUP = "no follow-up question"

_DONE = None  # queue sentinel

# Answer kinds of a follow-up turn that get a fresh follow-up question: the
# verdict is about that question, not about the conversation before it.
_FRESH_FOLLOWUP = frozenset({"skipped", "vetoed", "rejected"})


@dataclass(slots=True)
class RunStats:
    """Live counters for progress lines, the report and the run_end event."""

    started: float = field(default_factory=time.monotonic)
    target: dict[str, int] = field(default_factory=dict)
    accepted: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)  # parser, screen and dedup reasons
    outcomes: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)  # last state of unanswered turns
    rejected: Counter[str] = field(default_factory=Counter)  # answer-gate reasons
    edited: Counter[str] = field(default_factory=Counter)  # answer-gate rules that changed an answer
    in_flight: int = 0
    question_calls: int = 0
    corpus_questions: int = 0  # accepted from passages (not part of ``accepted``: no aspect target)
    passages: list[int] = field(default_factory=lambda: [0, 0])  # asked (all runs), selected
    followup_calls: int = 0
    # LLM replies that carried nothing usable, by kind (replies.UNUSABLE_KINDS,
    # plus "unparseable", "screened_out" and "failed" for question rounds).
    unusable: Counter[str] = field(default_factory=Counter)
    # Aspects that ended this run short of per_aspect: aspect -> "saturated"
    # (the model had nothing new: final) or "unusable" (retried next run).
    short: dict[str, str] = field(default_factory=dict)
    rag_seconds: array[float] = field(default_factory=lambda: array("d"))  # 8 bytes an answer

    def snapshot(self) -> dict[str, Any]:
        return {
            "accepted": sum(self.accepted.values()),
            "target": sum(self.target.values()),
            "corpus_questions": self.corpus_questions,
            "passages": list(self.passages),
            "outcomes": dict(self.outcomes),
            "dropped": dict(self.dropped),
            "rejected": dict(self.rejected),
            "unusable": dict(self.unusable),
            "short": dict(self.short),
            "edited": dict(self.edited),
            "in_flight": self.in_flight,
            "seconds": round(time.monotonic() - self.started, 1),
        }


@dataclass(slots=True)
class _Job:
    plan: ConvPlan


class Graph:
    """One QA run. Build it, then ``await run()``; it returns why it stopped."""

    def __init__(
        self,
        settings: Settings,
        state: RunState,
        llm: LLMClient,
        answerer: Answerer,
        writer: LedgerWriter,
        *,
        earlier_questions: Callable[[], Iterable[list[str]]],
        passages: Sequence[Passage] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """``earlier_questions`` yields the texts ``state`` counts as accepted,
        a chunk at a time (it runs in a worker thread). ``passages``: the
        selected passages of the corpus to write questions from (those in
        ``state.passages_asked`` are not asked again). ``clock`` and ``sleep``
        time the waits (servers down, quota, the grace of a stop); seams for tests."""
        self.settings = settings
        self.state = state
        # Every answer row names the settings that shaped it (recorded in full at run_start).
        self.shape = shape_id(shape_of(settings))
        self.llm = llm
        self.answerer = answerer
        self.writer = writer
        self.n_workers = answerer.slots
        self._earlier_questions = earlier_questions
        self._clock = clock
        self._sleep = sleep
        self.stats = RunStats()
        self.passages = [p for p in passages if p.id not in state.passages_asked]
        self.stats.passages = [len(passages) - len(self.passages), len(passages)]
        self.stop_reason: StopReason = "complete"
        self.stop_detail = ""
        self._stopping = asyncio.Event()
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue(settings.run.queue_size)
        self._dedup = Deduper(settings.questions.near_duplicate_threshold)
        self._gate = compile_gate(settings.conversations)
        self._seq = state.next_seq
        self._quota_wait: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup  # the run's, set by run()
        self._down_since: float | None = None  # when every RAG server was first seen down
        self._down_logged: float | None = None  # when that was last logged
        self._servers_back = asyncio.Event()  # set when a server answers after all were down
        self._seeded: asyncio.Task[None]  # the Deduper's seeding, started by run()

    # ---- control -----------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self, reason: StopReason, detail: str = "") -> None:
        """Begin the two-phase stop; the first reason given is the one reported."""
        if not self.stopping:
            self.stop_reason = reason
            self.stop_detail = detail
            log.warning("stopping (%s)%s", reason, f": {detail}" if detail else "")
            self._stopping.set()
            self.llm.halt()

    async def run(self) -> StopReason:
        """Run until every aspect has its questions and every question its answer,
        or until a stop; return the reason."""
        qs = self.settings.questions
        for aspect in qs.aspects:
            have = self.state.accepted.get(aspect, 0)
            self.stats.target[aspect] = qs.per_aspect
            self.stats.accepted[aspect] = min(have, qs.per_aspect)

        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            # Seeding the near-duplicate index with a large resume takes tens of
            # seconds; answers of pending conversations need none of it, so it
            # runs in a thread while they start. Only producers wait for it.
            self._seeded = tg.create_task(self._seed_dedup())
            work = [tg.create_task(self._answer_worker(i)) for i in range(self.n_workers)]
            feeder = tg.create_task(self._feed())
            tg.create_task(self._watch_stop([*work, feeder]))
            progress = tg.create_task(self._progress())
            await asyncio.gather(*work, feeder, return_exceptions=True)
            progress.cancel()
            self._seeded.cancel()  # a stop before any producer needed it
            if self._quota_wait is not None:
                self._quota_wait.cancel()  # a probe still out when the grace ran out
        self._settle_short()
        return self.stop_reason

    def _settle_short(self) -> None:
        """After the graph ran: every aspect still short of per_aspect, and why
        (given up this run, or saturated in an earlier one); a run that had
        nothing more to do but fell short ends "short", not "complete"."""
        qs = self.settings.questions
        for aspect in qs.aspects:
            if self.stats.accepted[aspect] < qs.per_aspect and aspect not in self.stats.short:
                if aspect in self.state.exhausted:
                    self.stats.short[aspect] = "saturated"
        if self.stop_reason == "complete" and self.stats.short:
            self.stop_reason = "short"

    async def _seed_dedup(self) -> None:
        """Remember the questions of earlier runs in the Deduper, a chunk (read
        from the ledger) per worker-thread call. Until this returns nothing
        else touches the Deduper: producers await it before their first
        screening."""
        if not self._aspects_to_produce() and not self.passages and self.settings.conversations.max_turns <= 1:
            return  # nothing will be screened (no producer, no follow-up): spare the CPU for the answers
        chunks = iter(self._earlier_questions())  # a generator: the reading is done by next()
        while await asyncio.to_thread(self._seed_next, chunks):
            pass

    def _seed_next(self, chunks: Iterator[list[str]]) -> bool:
        """Seed the Deduper with the next chunk; False when there is none."""
        chunk = next(chunks, None)
        if chunk is None:
            return False
        self._dedup.seed(chunk)
        return True

    def release(self) -> None:
        """Drop the run-long indexes (the near-duplicate index above all) once the
        run is over, so the dataset and report built next do not add their
        memory on top of it."""
        self._dedup = Deduper(self.settings.questions.near_duplicate_threshold)

    async def _watch_stop(self, tasks: list[asyncio.Task[Any]]) -> None:
        """After a stop, give in-flight work ``grace_s`` to finish, then cancel it."""
        waiter = asyncio.ensure_future(self._stopping.wait())
        done_all = asyncio.ensure_future(asyncio.wait(tasks))
        try:
            await asyncio.wait({waiter, done_all}, return_when=asyncio.FIRST_COMPLETED)
            if done_all.done():
                return
            grace = asyncio.ensure_future(self._sleep(self.settings.run.grace_s))
            try:
                await asyncio.wait({grace, done_all}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                grace.cancel()
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                log.warning("cancelled %d task(s) still busy after %.0f s", len(pending), self.settings.run.grace_s)
        finally:
            waiter.cancel()
            done_all.cancel()

    async def _progress(self) -> None:
        # `status` beside a live run reads the tokens used so far from these rows.
        interval = min(self.settings.run.progress_interval_s, USAGE_EVERY_S)
        last: dict[str, Any] | None = None
        while True:
            await asyncio.sleep(interval)
            usage = self.llm.usage.snapshot()
            if usage != last:  # a row per change, not per tick
                last = usage
                await self.writer.record("events", {"event": "usage", "time": time.time(), "usage": usage})

    # ---- producing questions -------------------------------------------------------

    async def _feed(self) -> None:
        """Queue the conversations left from earlier runs, then run every aspect's
        producer concurrently; finally tell each worker there is no more."""
        for plan in self.state.pending:
            if self.stopping:
                break
            await self._queue.put(_Job(plan))
        async with asyncio.TaskGroup() as tg:
            for aspect in self._aspects_to_produce():
                tg.create_task(self._produce(aspect))
            if self.passages:
                tg.create_task(self._produce_passages())
        # Only on a clean finish: after a cancellation the workers are cancelled too.
        for _ in range(self.n_workers):
            await self._queue.put(_DONE)

    def _aspects_to_produce(self) -> list[str]:
        qs = self.settings.questions
        return [a for a in qs.aspects
                if self.stats.accepted[a] < qs.per_aspect and a not in self.state.exhausted]

    async def _produce(self, aspect: str) -> None:
        qs = self.settings.questions
        # A count and the last few texts, not every accepted text: the prompt
        # shows only SAMPLE, and a list of all of them grew ~100 B a question.
        have = self.state.accepted.get(aspect, 0)
        sample: deque[str] = deque(self.state.recent.get(aspect, ()), maxlen=SAMPLE)
        # Two kinds of empty round, each ending the aspect after max_stale_rounds
        # in a row: ``stale``, the questions were all known (the model has
        # nothing new: final), and ``lost``, the reply was of no use (empty,
        # refused, unparseable, every question screened out, the call failed:
        # tried again on the next run).
        stale = lost = 0
        lost_kinds: Counter[str] = Counter()
        while (have < qs.per_aspect and stale < qs.max_stale_rounds and lost < qs.max_stale_rounds
               and not self.stopping):
            need = qs.per_aspect - have
            messages = question_messages(qs, aspect, min(qs.batch_size, need), list(sample))
            try:
                text = await self._llm_text(messages, purpose="questions", aspect=aspect)
            except Stopped:
                return
            except (RetryableError, UnusableReply) as exc:
                # Counted as lost (the unusable ones were recorded by _llm_text).
                kind = exc.kind if isinstance(exc, UnusableReply) else "failed"
                if kind == "failed":
                    log.warning("question call for aspect %r failed: %s", aspect, exc)
                lost, lost_kinds[kind] = lost + 1, lost_kinds[kind] + 1
                continue
            self.stats.question_calls += 1
            if not self._seeded.done():
                await asyncio.shield(self._seeded)
            items = parse_question_list(text)
            fresh = self._screen(items, need)
            if not fresh:
                kind = self._empty_round(items)
                if kind is None:
                    stale += 1
                else:
                    lost, lost_kinds[kind] = lost + 1, lost_kinds[kind] + 1
                    await self._note_unusable("questions", kind, text[:200], aspect=aspect)
                continue
            stale = lost = 0
            rows = []
            for q in fresh:
                rows.append(question_row(id=question_id(q), aspect=aspect, text=q, seq=self._seq))
                self._seq += 1
            await self.writer.record_many("questions", rows)
            sample.extend(fresh)
            have += len(fresh)
            self.stats.accepted[aspect] += len(fresh)
            await self._enqueue(rows, aspect)
        if have < qs.per_aspect and not self.stopping:
            why = "saturated" if stale >= qs.max_stale_rounds else "unusable"
            if why == "saturated":
                log.warning("aspect %r: %d of %d questions after %d rounds with nothing new",
                            aspect, have, qs.per_aspect, stale)
            else:
                log.warning("aspect %r: %d of %d questions; %d rounds in a row brought unusable "
                            "replies (%s); asked again on the next run", aspect, have, qs.per_aspect,
                            lost, ", ".join(f"{k} {n}" for k, n in lost_kinds.most_common()))
            self.stats.short[aspect] = why
            # per_aspect and max_stale_rounds are kept: raising either reopens the aspect.
            await self.writer.record("events", {
                "event": "aspect_exhausted", "aspect": aspect, "accepted": have, "why": why,
                "unusable": dict(lost_kinds), "per_aspect": qs.per_aspect,
                "max_stale_rounds": qs.max_stale_rounds,
            })

    def _empty_round(self, items: list[str]) -> str | None:
        """Why a question round that brought nothing new was of no use:
        "unparseable" (no question in the reply), "screened_out" (every one
        failed the screen: too long, wrong language, ...; counted in
        ``dropped``), or None when well-formed questions were all known."""
        if not items:
            return "unparseable"
        qs = self.settings.questions
        if all(screen_question(q, qs) is not None for q in items):
            return "screened_out"
        return None

    async def _enqueue(self, rows: list[dict[str, Any]], aspect: str) -> None:
        """Queue a conversation for each first-turn question row just recorded."""
        for row in rows:
            plan = ConvPlan(
                conv=row["id"],
                aspect=aspect,
                seq=row["seq"],
                target=_target(self.settings, row["id"]),
                next_question=row["text"],
            )
            await self._queue.put(_Job(plan))

    async def _produce_passages(self) -> None:
        """The second producer kind: each passage not asked yet, once, by a few
        tasks (the LLM client's concurrency caps the calls in flight)."""
        todo = iter(self.passages)
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self.settings.llm.concurrency, len(self.passages))):
                tg.create_task(self._passage_worker(todo))

    async def _passage_worker(self, todo: Iterator[Passage]) -> None:
        for passage in todo:
            if self.stopping:
                return
            await self._produce_passage(passage)

    async def _produce_passage(self, passage: Passage) -> None:
        """Questions the passage answers: parsed, screened (standalone too),
        deduplicated against both sources, recorded with their passage; then
        the passage is recorded as asked. A failed call or an empty reply
        leaves it unrecorded, for the next run."""
        qs = self.settings.questions
        messages = passage_messages(qs, passage.text, passage.file, qs.per_passage)
        try:
            text = await self._llm_text(messages, purpose="passage questions", passage=passage.id)
        except Stopped:
            return
        except (RetryableError, UnusableReply) as exc:
            log.warning("passage %s of %s: %s; asked again next run", passage.id, passage.file, exc)
            return
        self.stats.question_calls += 1
        items = parse_question_list(text)
        if not items:
            log.warning("passage %s of %s: the reply held no question; asked again next run",
                        passage.id, passage.file)
            self.stats.dropped["empty_reply"] += 1
            return
        standalone = []
        for q in items:
            if (reason := screen_standalone(q)) is not None:
                self.stats.dropped[reason] += 1
            else:
                standalone.append(q)
        if not self._seeded.done():
            await asyncio.shield(self._seeded)
        fresh = self._screen(standalone, qs.per_passage)
        rows = []
        for q in fresh:
            rows.append(question_row(id=question_id(q), aspect="", text=q, seq=self._seq,
                                     passage=passage.id, file=passage.file, span=(passage.start, passage.end)))
            self._seq += 1
        if rows:
            await self.writer.record_many("questions", rows)
        await self.writer.record("events", {"event": "passage", "passage": passage.id,
                                            "file": passage.file, "questions": len(rows)})
        self.stats.corpus_questions += len(rows)
        self.stats.passages[0] += 1
        await self._enqueue(rows, "")

    def _screen(self, items: list[str], need: int) -> list[str]:
        """The new, well-formed questions of one reply, at most ``need``; the
        rest counted by reason. Each is checked against every question before
        it, in this reply and in the run; the ones over ``need`` are
        remembered too, so a later reply cannot bring them back."""
        qs = self.settings.questions
        dropped = self.stats.dropped
        kept = []
        for q in items:
            if (reason := screen_question(q, qs)) is not None:
                dropped[reason] += 1
            else:
                kept.append(q)
        fresh: list[str] = []
        for q, reason in zip(kept, self._dedup.add_many(kept)):
            if reason is not None:
                dropped[reason] += 1
            elif len(fresh) < need:
                fresh.append(q)
            else:
                dropped["over_target"] += 1
        return fresh

    # ---- answering -----------------------------------------------------------------

    async def _answer_worker(self, _index: int) -> None:
        while (job := await self._queue.get()) is not _DONE:
            try:
                await self._serve(job.plan)
            except Stopped:
                pass  # the conversation is in the ledger: the next run goes on with it

    async def _serve(self, plan: ConvPlan) -> None:
        """Converse, waiting out exhausted quota and servers down when the
        settings say so; raises :class:`Stopped` when the run stops first."""
        while True:
            self._raise_if_stopping()
            try:
                await self._converse(plan)
                return
            except QuotaExhausted as exc:
                await self._on_quota(exc)
            except ServersDown as exc:
                await self._on_servers_down(exc)
            except FatalServiceError as exc:
                self.request_stop("fatal", str(exc))
                raise Stopped(str(exc)) from exc

    def _raise_if_stopping(self) -> None:
        if self.stopping:
            raise Stopped(f"the run is stopping ({self.stop_reason})")

    @property
    def servers_down_since(self) -> float | None:
        """When every RAG server was first seen down (on the run's clock), or
        None while one answers."""
        return self._down_since

    async def _on_servers_down(self, exc: ServersDown) -> None:
        """No answer server can take a request: wait as long as the error says
        (``exc.retry_in``), or stop when it says waiting is no use (None).
        Returns when the caller may try again; raises :class:`Stopped`
        otherwise."""
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
        if exc.retry_in is None:
            self.request_stop("servers_down", str(exc))
        else:
            if self._down_logged is None or now - self._down_logged >= 60.0:
                # Once a minute, not once per worker and check.
                self._down_logged = now
                log.warning("%s", exc)
            await self._sleep_unless_stopping(max(exc.retry_in, 0.01), self._servers_back)
        self._raise_if_stopping()

    async def _sleep_unless_stopping(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep ``seconds``, less when the run stops or ``wake`` is set."""
        waits = {asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(self._sleep(seconds))}
        if wake is not None:
            waits.add(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _converse(self, plan: ConvPlan) -> None:
        """Ask the conversation's turns from ``plan.next_turn`` until its target,
        stopping at the first turn without an accepted answer.

        A follow-up the backend declined (skipped, vetoed) or whose answer the
        gate rejected says nothing against the conversation: a fresh follow-up
        is written for that turn, up to ``[run] max_answer_attempts`` questions
        in all, before the conversation ends short."""
        topic = self.settings.questions.topic
        tries = 0  # questions of this turn declined so far
        while plan.next_turn <= plan.target and not self.stopping:
            question = plan.next_question
            if question is None:
                question = await self._write_followup(plan, topic)
                if question is None:
                    return
            row = await self._ask(plan, question)
            if self._down_since is not None:
                # A server answered (a check ended its rest): wake the workers waiting.
                self._down_since = self._down_logged = None
                self._servers_back.set()
                self._servers_back = asyncio.Event()
            if row["kind"] != "answered":
                tries += 1
                if (plan.next_turn == 1 or row["kind"] not in _FRESH_FOLLOWUP
                        or tries >= self.settings.run.max_answer_attempts):
                    return
                plan.next_question = None  # another follow-up to the same answer
                continue
            tries = 0
            plan.history.append((question, row["answer"]))
            plan.next_turn += 1
            plan.next_question = None

    async def _write_followup(self, plan: ConvPlan, topic: str) -> str | None:
        """The follow-up question of ``plan.next_turn``, as a person would go on
        in the conversation: parsed like a question list, screened like a
        first question, new among every question of the run; recorded, then
        returned. None when there is none: an answer row then says why, with
        no question text (a rejected text is never kept nor asked later).
        Raises :class:`Stopped`."""
        last_q, last_a = plan.history[-1]
        messages = followup_messages(self.settings.conversations, topic, last_q, last_a)
        self.stats.followup_calls += 1
        try:
            text = await self._llm_text(messages, purpose="followup", conv=plan.conv)
        except ContentRefused as exc:
            # Final: the conversation ends at its answered turns.
            await self._record_answer(plan, "", Outcome(kind="refused", state=f"{REFUSED}: {exc.provider_message}"))
            return None
        except UnusableReply as exc:
            await self._record_answer(plan, "", Outcome(kind="failed", state=f"{NO_FOLLOWUP} ({exc.kind})"))
            return None
        except RetryableError as exc:
            await self._record_answer(plan, "", Outcome(kind="failed", state=f"LLM error: {exc}"))
            return None
        candidates = followup_candidates(text)
        if not self._seeded.done():
            await asyncio.shield(self._seeded)
        fresh = self._screen(candidates, 1) if candidates else []
        if not fresh:
            why = self._empty_round(candidates) or "duplicate"
            await self._record_answer(plan, "", Outcome(kind="failed", state=f"{NO_FOLLOWUP} ({why})"))
            return None
        followup = fresh[0]
        await self.writer.record(
            "questions",
            followup_row(id=question_id(followup), conv=plan.conv, turn=plan.next_turn, text=followup),
        )
        return followup

    async def _ask(self, plan: ConvPlan, question: str) -> dict[str, Any]:
        # The backend keeps no history: a follow-up goes out standalone (the
        # topic as a lead-in when it does not name it); the row keeps it as asked.
        qs = self.settings.questions
        sent = question if plan.next_turn == 1 else standalone_question(question, qs.topic, qs.language)
        self.stats.in_flight += 1
        try:
            outcome = await self.answerer.ask(sent)
        finally:
            self.stats.in_flight -= 1
        self.stats.rag_seconds.append(outcome.seconds)
        if outcome.kind == "refused":  # the local backend's LLM call, refused by the provider
            await self._note_unusable("answer", "refused", outcome.state, conv=plan.conv)
        return await self._record_answer(plan, question, outcome)

    async def _record_answer(self, plan: ConvPlan, question: str, outcome: Outcome) -> dict[str, Any]:
        kind: str = outcome.kind
        answer, reason = "", ""
        refs: tuple[str, ...] = outcome.refs
        edits: tuple[str, ...] = ()
        if kind == "answered":
            # A backend with a reasoning model behind it (HuixiangDou on Qwen3) sends its
            # reasoning too; only the answer proper is gated, and can become data.
            gated = self._gate(answer_proper(outcome.answer))
            answer, edits = gated.answer, gated.changes
            if gated.refs:  # a references list the gate took out of the answer's text
                refs = tuple(dict.fromkeys((*refs, *gated.refs)))
            self.stats.edited.update(edits)
            if gated.reason is not None:
                kind, reason = "rejected", gated.reason
                self.stats.rejected[gated.reason] += 1
        else:
            self.stats.states[outcome.state] += 1
        self.stats.outcomes[kind] += 1
        row = answer_row(
            conv=plan.conv,
            turn=plan.next_turn,
            kind=kind,
            question=question,
            answer=answer,
            raw_answer=outcome.answer,
            refs=refs,
            state=outcome.state,
            reason=reason,
            server=outcome.server,
            attempts=outcome.attempts,
            seconds=outcome.seconds,
            shape=self.shape,
            backend=self.answerer.backend,
            edits=edits,
        )
        await self.writer.record("answers", row)
        if kind == "refused":
            self._check_refusals()
        return row

    # ---- the LLM, with the run's reaction to its errors ----------------------------------

    async def _llm_text(self, messages: list[dict[str, str]], *, purpose: str, **where: str) -> str:
        """The answer proper of one LLM reply, waiting out exhausted quota when
        the settings say so. Raises :class:`RetryableError` (failed after its
        retries) or :class:`UnusableReply` (nothing usable in the reply:
        counted and recorded first, ``where`` saying for what: aspect, conv or
        passage) when the call failed, which costs only its item, and
        :class:`Stopped` when the run stops before or during the call."""
        while True:
            self._raise_if_stopping()
            try:
                return (await self.llm.chat(messages)).text
            except UnusableReply as exc:
                detail = exc.provider_message if isinstance(exc, ContentRefused) else str(exc)
                await self._note_unusable(purpose, exc.kind, detail, **where)
                if isinstance(exc, ContentRefused):
                    self._check_refusals()
                raise
            except QuotaExhausted as exc:
                await self._on_quota(exc)
            except FatalServiceError as exc:
                self.request_stop("fatal", str(exc))
                raise Stopped(str(exc)) from exc

    async def _note_unusable(self, purpose: str, kind: str, detail: str, **where: str) -> None:
        """Count an LLM reply that gave nothing usable and record it in the
        event ledger, for the report (by kind, with examples)."""
        self.stats.unusable[kind] += 1
        log.warning("%s reply unusable (%s): %s", purpose, kind, detail[:200])
        await self.writer.record("events", {"event": "llm_unusable", "purpose": purpose, "kind": kind,
                                            **where, "detail": detail[:300]})

    def _check_refusals(self) -> None:
        """Stop (resumably) when the provider refuses most recent calls."""
        if not self.llm.refusals_dominate():
            return
        s = self.llm.settings
        self.request_stop("refused", (
            f"the provider refused {self.llm.usage.refused_share():.0%} of the last {s.refusal_window} "
            f"LLM calls on content grounds ([llm] max_refused_share = {s.max_refused_share:g}); the run "
            "stopped rather than spend the quota on refusals. report.md lists what was refused; change "
            "the topic, aspects or prompts (or the provider) before resuming"
        ))

    async def _on_quota(self, exc: QuotaExhausted) -> None:
        """Exhausted quota: stop, or (``on_quota = "wait"``) wait with every
        other caller for the one probe that finds it back. Returns when the
        caller may try again; raises :class:`Stopped` otherwise."""
        if self.settings.run.on_quota == "stop":
            self.request_stop("quota", str(exc))
        else:
            if self._quota_wait is None or self._quota_wait.done():
                self._quota_wait = self._tg.create_task(self._wait_for_quota(exc))
            # Shielded: a caller cancelled (the grace ran out) must not end the
            # probe the others wait for; its cancellation goes on up.
            await asyncio.shield(self._quota_wait)
        self._raise_if_stopping()

    async def _wait_for_quota(self, exc: ServiceError) -> None:
        """Sleep ``quota_wait_s``, probe with a one-token chat; again until the
        quota is back or the run stops. Raises nothing but cancellation."""
        run = self.settings.run
        while not self.stopping:
            log.warning("quota exhausted (%s); waiting %.0f s before probing", exc, run.quota_wait_s)
            await self._sleep_unless_stopping(run.quota_wait_s)
            if self.stopping:
                return
            try:
                await self.llm.probe(chat=True)
                log.info("quota is back; going on")
                return
            except (QuotaExhausted, RetryableError) as again:
                exc = again
            except FatalServiceError as fatal:
                self.request_stop("fatal", str(fatal))
            except Stopped:
                return


def _target(settings: Settings, conv: str) -> int:
    c = settings.conversations
    return target_turns(conv, c.min_turns, c.max_turns)
