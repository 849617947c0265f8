"""Run state: what the ledgers say was done, and what a run still has to do.

Pure: it takes ledger rows (question rows, or blocks of them as columns)
against the index of the answer ledger (:class:`pipeline.store.answers.AnswerIndex`)
and settings, and derives the plan a resumed run follows.
The QA graph, ``status`` and ``qa --dry-run`` all read it, so they cannot
disagree about where a run stands.

Ledgers under ``<out_dir>/state/``:

``questions.jsonl``  first-turn and follow-up questions (rows: :mod:`pipeline.store.schema`)
``answers.jsonl``    one row per answer attempt of a turn (rows: :mod:`pipeline.store.schema`)
``events.jsonl``     run start/end, aspects given up, passages asked, usage snapshots
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import not_
from pathlib import Path
from typing import Any, Final

import orjson

from pipeline.errors import InputError
from pipeline.settings import Settings
from pipeline.store.answers import AnswerIndex
from pipeline.store.layout import QuestionBlock, json_string
from pipeline.store.schema import is_followup, is_from_passage
from pipeline.store.shape import RunShapes, Scope

__all__ = [
    "LEDGERS",
    "SAMPLE",
    "ConvPlan",
    "RunState",
    "StateBuilder",
    "aspects_given_up",
    "derive_state",
    "ledger_paths",
    "plan_builder",
    "target_turns",
]

LEDGERS = ("questions", "answers", "events")

# How many accepted questions of an aspect a later batch of the question
# prompt is shown, so the model writes different ones without the prompt
# growing with the run; the plan keeps that many of each aspect, the newest.
SAMPLE: Final = 20


def ledger_paths(state_dir: Path) -> dict[str, Path]:
    """The ledger files of one output folder."""
    return {name: state_dir / f"{name}.jsonl" for name in LEDGERS}


def target_turns(conv_id: str, min_turns: int, max_turns: int) -> int:
    """How many turns a conversation aims for: drawn from its id, so a resumed
    run aims for the same number the interrupted one did."""
    if max_turns <= min_turns:
        return min_turns
    draw = int.from_bytes(hashlib.blake2b(conv_id.encode(), digest_size=4).digest(), "big")
    return min_turns + draw % (max_turns - min_turns + 1)


@dataclass(slots=True)
class ConvPlan:
    """Where one conversation stands: the turns answered so far and the next."""

    conv: str
    aspect: str
    seq: int
    target: int
    history: list[tuple[str, str]] = field(default_factory=list)
    next_turn: int = 1
    next_question: str | None = None  # a follow-up already written (and paid for)


@dataclass(slots=True)
class RunState:
    """Everything a run needs to resume.

    Not every accepted question: a count and the newest :data:`SAMPLE` of
    each aspect are all the plan needs, and a million texts were a str each
    to make at start-up and ~80 MB held all run. The near-duplicate index
    reads them back from the question ledger (its first ``questions_read``
    bytes) while the run goes on."""

    accepted: dict[str, int]  # aspect -> how many first-turn questions were accepted
    recent: dict[str, list[str]]  # aspect -> its newest SAMPLE accepted questions, oldest first
    exhausted: set[str]  # aspects given up for good: saturated under the current settings
    pending: list[ConvPlan]  # conversations with a turn still to ask, in seq order
    finished: int  # conversations that need nothing more
    gave_up: int  # conversations whose next turn failed max_answer_attempts times
    next_seq: int
    last_run: dict[str, Any] | None  # the last run_start/run_end pair, merged
    usage: dict[str, float]  # token and cost totals over all runs
    # The answer backend of the last run that recorded one ("huixiangdou", "local"), or None.
    last_backend: str | None = None
    # Passages of the corpus the question writer was asked about (their
    # questions recorded, or a ``passage`` event): never asked again.
    passages_asked: set[str] = field(default_factory=set)
    # Why each aspect was last given up: "saturated" or "unusable" (see aspects_given_up).
    given_up: dict[str, str] = field(default_factory=dict)
    corpus_questions: int = 0  # first-turn questions written from passages
    # Conversations the current settings leave out (pipeline.store.shape.Scope),
    # by why: neither continued nor counted above.
    set_aside: dict[str, int] = field(default_factory=dict)
    # The shape the last run recorded (pipeline.store.shape), None before shapes were.
    last_shape: dict[str, Any] | None = None
    # Finished conversations with answered turns, then one not answered: short of their target.
    short: int = 0
    # Bytes of the question ledger the plan was read from (by pipeline.qa.stage.load_state;
    # 0 when derived from rows in memory): where the rows of earlier runs end.
    questions_read: int = field(default=0, compare=False)

    def total_questions(self) -> int:
        return sum(self.accepted.values()) + self.corpus_questions


def _merge_runs(events: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, float]]:
    """The last run (start merged with its end, if any) and usage summed over runs.

    A run writes cumulative ``usage`` snapshots; the last snapshot of each run counts."""
    last: dict[str, Any] | None = None
    usage: dict[str, float] = defaultdict(float)
    run_usage: dict[str, float] = {}
    for ev in events:
        kind = ev.get("event")
        if kind == "run_start":
            for k, v in run_usage.items():
                usage[k] += v
            run_usage = {}
            last = dict(ev)
            last["status"] = "running or crashed"
        elif kind in ("usage", "run_end"):
            if isinstance(ev.get("usage"), dict):
                run_usage = {k: float(v) for k, v in ev["usage"].items() if isinstance(v, (int, float))}
            if kind == "run_end" and last is not None:
                # "time" stays the start; the end's own time becomes "ended".
                last.update({("ended" if k == "time" else k): v for k, v in ev.items() if k != "event"})
    for k, v in run_usage.items():
        usage[k] += v
    return last, dict(usage)


class StateBuilder:
    """The resume plan, built from question rows streamed in file order
    against the index of the answer ledger.

    A latest row is read back from the index only for what the plan keeps
    (the history and question of conversations still pending), so the
    answer ledger is never held.

    Rows come one at a time (:meth:`add`) or a block of columns at a time
    (:meth:`add_questions`, asking the index about a whole block at once);
    the plan is the same either way.

    A turn's latest row decides it: ``answered`` moves the conversation on;
    ``skipped``, ``vetoed`` and ``rejected`` (and any other kind) end it, as
    asking again would get the same verdict, unless its kind is one of
    ``retry``; ``failed`` is retried until ``max_answer_attempts`` failed rows.
    A conversation ended after answered turns is counted ``short``."""

    def __init__(
        self,
        answers: AnswerIndex,
        *,
        aspects: Sequence[str],
        min_turns: int,
        max_turns: int,
        max_answer_attempts: int,
        scope: Scope | None = None,
        retry: Iterable[str] = (),
        per_aspect: int | None = None,
        max_stale_rounds: int | None = None,
    ) -> None:
        """``retry``: answer kinds (``skipped``, ``vetoed``, ...) whose turns are
        asked again, as ``qa --retry`` wants after the knowledge base improved;
        ``per_aspect`` and ``max_stale_rounds`` go to :func:`aspects_given_up`."""
        self._per_aspect, self._max_stale_rounds = per_aspect, max_stale_rounds
        self._answers = answers
        self._scope = scope
        self._set_aside: Counter[str] = Counter()
        self._retry = frozenset(retry) - {"answered"}
        self._min, self._max, self._attempts = min_turns, max_turns, max_answer_attempts
        self.accepted: dict[str, int] = dict.fromkeys(aspects, 0)
        self._recent: dict[str, deque[str]] = {}
        # The first turns of the last block (aspects, texts, count per aspect),
        # sampled once the next block says which aspects it leaves short.
        self._tail: tuple[Sequence[str], Sequence[bytes], Counter[str]] | None = None
        self._pending: list[ConvPlan] = []
        # Plans whose next question is a follow-up that may come later in the ledger.
        self._deferred: list[ConvPlan] = []
        self._followups: dict[tuple[str, int], str] = {}
        self._finished = self._gave_up = self._short = self._next_seq = 0
        self._passages: set[str] = set()
        self._corpus_questions = 0

    def add(self, row: Mapping[str, Any]) -> None:
        """Take one question-ledger row (a first-turn question or a follow-up)."""
        try:
            if is_followup(row):
                self.add_followup(row["conv"], int(row["turn"]), row["text"])
                return
            conv, text, seq = row["id"], row["text"], int(row["seq"])
            aspect = None if is_from_passage(row) else row["aspect"]
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"state/questions.jsonl: the row {orjson.dumps(row).decode()[:200]} is not a question "
                "row (it needs id, aspect, text and seq, or id, conv, turn and text). The ledger is "
                "damaged, so nothing was dropped: fix or delete that line, then run again"
            ) from None
        if seq >= self._next_seq:
            self._next_seq = seq + 1
        scope = self._scope
        if scope is not None and (scope.other_topics or (aspect and aspect not in scope.aspects)):
            why = scope.why_out(aspect or "", seq)
            if why is not None:
                self._set_aside[why] += 1
                return
        if aspect is None:
            self._passages.add(row["passage"])
            self._corpus_questions += 1
            self._plan(conv, "", seq, text)
            return
        self.accepted[aspect] = self.accepted.get(aspect, 0) + 1
        self._sample_tail({})
        self._recent_of(aspect).append(text)
        self._plan(conv, aspect, seq, text)

    def add_followup(self, conv: str, turn: int, text: str) -> None:
        """Take one follow-up row: kept only if its turn still needs asking."""
        found = self._answers.turn(conv, turn)
        # Only a turn not asked yet, failed, or asked again (qa --retry) needs its text.
        if found is None or found[0] == "failed" or found[0] in self._retry:
            self._followups[(conv, turn)] = text

    def add_questions(self, block: QuestionBlock) -> None:
        """Take a block of rows at once: the same as :meth:`add` of each in
        file order (follow-ups and first turns touch disjoint state, so they
        may go in any order between them), with no Python code per first-turn
        row the index says is finished, and only the texts the plan keeps decoded."""
        ids, aspects, texts, seqs = block.ids, block.aspects, block.texts, block.seqs
        if self._scope is not None and not self._scope.keeps_block(aspects, seqs):
            # Some rows are left out: take them one at a time (rare: after a settings change).
            for i in range(len(ids)):
                self.add({"id": ids[i].decode(), "aspect": aspects[i], "text": json_string(texts[i]),
                          "seq": seqs[i], **block.extras.get(i, {})})
            for conv, turn, text in block.followups:
                self.add_followup(conv, turn, text)
            return
        passages = [i for i, extra in block.extras.items() if is_from_passage(extra)]
        if passages:  # questions of corpus passages: no aspect to count or sample
            self._passages.update(block.extras[i]["passage"] for i in passages)
            self._corpus_questions += len(passages)
            self._next_seq = max(self._next_seq, max(seqs[i] for i in passages) + 1)
            # As for aspect rows: no Python code per question the index says is finished.
            for j in self._unfinished([ids[i] for i in passages]):
                i = passages[j]
                self._plan(ids[i].decode(), "", seqs[i], json_string(texts[i]))
            skip = set(passages)
            keep = [i for i in range(len(ids)) if i not in skip]
            ids, aspects, texts, seqs = ([col[i] for i in keep] for col in (ids, aspects, texts, seqs))
        accepted = self.accepted
        counts = Counter(aspects)
        for aspect, n in counts.items():  # new aspects in order of first appearance
            accepted[aspect] = accepted.get(aspect, 0) + n
        if counts:
            self._sample_tail(counts)
            self._tail = (aspects, texts, counts)
        if seqs:
            self._next_seq = max(self._next_seq, max(seqs) + 1)
        for i in self._unfinished(ids):
            self._plan(ids[i].decode(), aspects[i], seqs[i], json_string(texts[i]))
        for conv, turn, text in block.followups:
            self.add_followup(conv, turn, text)

    def _recent_of(self, aspect: str) -> deque[str]:
        recent = self._recent.get(aspect)
        if recent is None:
            recent = self._recent[aspect] = deque(maxlen=SAMPLE)
        return recent

    def _sample_tail(self, newer: Mapping[str, int]) -> None:
        """Add the last block's texts to the samples, for the aspects that
        ``newer`` (rows per aspect since that block) leaves short of
        :data:`SAMPLE`: the others' samples will be newer rows only. With
        aspects written in turn, that is no row until the final block."""
        if self._tail is None:
            return
        aspects, texts, counts = self._tail
        self._tail = None
        short = [a for a in counts if newer.get(a, 0) < SAMPLE]
        if not short:
            return
        newest: dict[str, list[bytes]] = {a: [] for a in short}
        left = len(short)
        for i in range(len(aspects) - 1, -1, -1):  # back from the end, until each has enough
            taken = newest.get(aspects[i])
            if taken is not None and len(taken) < SAMPLE:
                taken.append(texts[i])
                if len(taken) == SAMPLE:
                    left -= 1
                    if not left:
                        break
        for aspect, taken in newest.items():
            self._recent_of(aspect).extend(map(json_string, reversed(taken)))

    def _unfinished(self, ids: Sequence[bytes]) -> list[int]:
        """Indices (ascending) of the conversations ``ids`` that :meth:`_plan`
        must look at; the others have every turn answered and are counted
        finished here. When targets vary, a conversation answered through
        ``min_turns`` still needs its target."""
        alive: Sequence[int] = range(len(ids))
        rest: list[int] = []
        for turn in range(1, self._min + 1):
            if not alive:
                break
            asked = ids if turn == 1 else [ids[i] for i in alive]
            answered = self._answers.answered(asked, turn)
            rest.extend(compress(alive, map(not_, answered)))
            if turn == self._min and self._max <= self._min:  # the last turn: count, no list
                self._finished += answered.count(True)
                alive = ()
            else:
                alive = list(compress(alive, answered))
        rest.extend(alive)
        rest.sort()
        return rest

    def _plan(self, conv: str, aspect: str, seq: int, text: str) -> None:
        """Walk one conversation's turns: count it finished or given up, or pend its next turn."""
        target = self._min if self._max <= self._min else target_turns(conv, self._min, self._max)
        turn_of = self._answers.turn
        answered: list[Any] = []
        turn = 1
        while turn <= target:
            found = turn_of(conv, turn)
            if found is None:
                self._pend(conv, aspect, seq, target, turn, answered, text if turn == 1 else None)
                return
            kind = found[0]
            if kind == "answered":
                answered.append(found[2])
                turn += 1
                continue
            if kind in self._retry:
                # Asked for again (``qa --retry``): the same question, a fresh count of
                # failures. A later turn's is its accepted follow-up row (finish() finds
                # it), never the answer row's text: that may be a rejected one.
                question = text if turn == 1 else None
                self._pend(conv, aspect, seq, target, turn, answered, question)
                return
            if kind == "failed":
                failures = found[1]
                if failures < self._attempts:
                    # A later turn's question is only ever an accepted follow-up
                    # row (found by finish()): a failed row's text may be one
                    # that was rejected, and is never asked.
                    question = text if turn == 1 else None
                    self._pend(conv, aspect, seq, target, turn, answered, question)
                    return
                self._gave_up += 1
            if answered:
                self._short += 1  # answered turns, then one that was not: short of its target
            break
        self._finished += 1

    def _pend(
        self, conv: str, aspect: str, seq: int, target: int, turn: int,
        answered: list[int], question: str | None,
    ) -> None:
        rows = [self._answers.read(ref) for ref in answered]
        plan = ConvPlan(
            conv=conv, aspect=aspect, seq=seq, target=target,
            history=[(r["question"], r["answer"]) for r in rows], next_turn=turn,
            next_question=question,
        )
        self._pending.append(plan)
        if question is None:
            self._deferred.append(plan)

    def finish(
        self,
        events: Sequence[Mapping[str, Any]],
        *,
        retry_short: bool = False,
    ) -> RunState:
        """The plan, once every question row was added; ``events`` are the
        event-ledger rows; the rest goes to :func:`aspects_given_up`."""
        self._sample_tail({})
        for plan in self._deferred:
            plan.next_question = self._followups.get((plan.conv, plan.next_turn))
        self._pending.sort(key=lambda p: p.seq)  # stable: ties stay in file order
        last_run, usage = _merge_runs(events)
        final, why = aspects_given_up(events, self._per_aspect, self._max_stale_rounds, retry_short)
        return RunState(
            accepted=self.accepted,
            recent={aspect: list(texts) for aspect, texts in self._recent.items()},
            exhausted=final,
            given_up=why,
            pending=self._pending,
            finished=self._finished,
            gave_up=self._gave_up,
            short=self._short,
            next_seq=self._next_seq,
            last_run=last_run,
            usage=usage,
            last_backend=next((ev["backend"] for ev in reversed(events)
                               if ev.get("event") == "run_start" and isinstance(ev.get("backend"), str)),
                              None),
            passages_asked=self._passages | {
                str(ev["passage"]) for ev in events if ev.get("event") == "passage" and "passage" in ev},
            corpus_questions=self._corpus_questions,
            set_aside=dict(self._set_aside.most_common()),
            last_shape=dict(shape) if (shape := RunShapes(events).last) is not None else None,
        )


def aspects_given_up(
    events: Iterable[Mapping[str, Any]],
    per_aspect: int | None,
    max_stale_rounds: int | None,
    retry_short: bool = False,
) -> tuple[set[str], dict[str, str]]:
    """(aspects given up for good, why each aspect was last given up).

    An aspect is given up for good only when its last ``aspect_exhausted``
    event says "saturated" (the model had nothing new) under settings at
    least as demanding as ``per_aspect`` and ``max_stale_rounds`` (None: not
    compared): raising either reopens it, as does ``retry_short``. Rounds of
    unusable replies (empty, refused, unparseable) never close an aspect, nor
    does an event written before the two were told apart (no "why")."""
    last: dict[str, Mapping[str, Any]] = {}
    for ev in events:
        if ev.get("event") == "aspect_exhausted" and "aspect" in ev:
            last[str(ev["aspect"])] = ev
    why = {a: str(ev.get("why", "unusable")) for a, ev in last.items()}
    if retry_short:
        return set(), why
    final = set()
    for aspect, ev in last.items():
        if ev.get("why") != "saturated":
            continue
        if per_aspect is not None and int(ev.get("per_aspect", 0)) < per_aspect:
            continue
        if max_stale_rounds is not None and int(ev.get("max_stale_rounds", 0)) < max_stale_rounds:
            continue
        final.add(aspect)
    return final, why


def derive_state(
    question_rows: Iterable[Mapping[str, Any]],
    answer_rows: Iterable[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    *,
    aspects: Sequence[str],
    min_turns: int,
    max_turns: int,
    max_answer_attempts: int,
    scope: Scope | None = None,
    per_aspect: int | None = None,
    max_stale_rounds: int | None = None,
    retry: Iterable[str] = (),
) -> RunState:
    """Derive the resume plan from ledger rows already read (see
    :class:`StateBuilder`, which ``pipeline.qa.stage.load_state`` feeds from the
    files without holding them)."""
    builder = StateBuilder(
        AnswerIndex.of_rows(answer_rows),
        aspects=aspects,
        min_turns=min_turns,
        max_turns=max_turns,
        max_answer_attempts=max_answer_attempts,
        scope=scope,
        retry=retry,
        per_aspect=per_aspect,
        max_stale_rounds=max_stale_rounds,
    )
    for row in question_rows:
        builder.add(row)
    return builder.finish(events)


def plan_builder(settings: Settings, answers: AnswerIndex, events: Sequence[Mapping[str, Any]],
                 *, retry: Iterable[str] = ()) -> StateBuilder:
    """A :class:`StateBuilder` under ``settings`` (turns, attempts, the scope
    that ``events`` and the settings give, the aspects' targets)."""
    c, qs = settings.conversations, settings.questions
    return StateBuilder(
        answers,
        aspects=qs.aspects,
        min_turns=c.min_turns,
        max_turns=c.max_turns,
        max_answer_attempts=settings.run.max_answer_attempts,
        scope=Scope.of(settings, events),
        retry=retry,
        per_aspect=qs.per_aspect,
        max_stale_rounds=qs.max_stale_rounds,
    )
