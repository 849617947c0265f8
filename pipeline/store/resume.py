"""Run state: what the ledgers say was done, and what a run still has to do.

Pure: it takes ledger rows (or a lookup into an index of them, or blocks of
their raw bytes) and settings, and derives the plan a resumed run follows.
The QA graph, ``status`` and ``qa --dry-run`` all read it, so they cannot
disagree about where a run stands.

Ledgers under ``<out_dir>/state/``:

``questions.jsonl``  first-turn and follow-up questions (rows: :mod:`pipeline.store.schema`)
``answers.jsonl``    one row per answer attempt of a turn (rows: :mod:`pipeline.store.schema`)
``events.jsonl``     run start/end, aspects given up, passages asked, usage snapshots
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import not_
from pathlib import Path
from typing import Any, Final

import orjson

from pipeline.errors import InputError
from pipeline.store.schema import is_from_passage
from pipeline.store.shape import RunShapes, Scope

__all__ = [
    "LEDGERS",
    "SAMPLE",
    "AnsweredOf",
    "ConvPlan",
    "QuestionBlock",
    "RowOf",
    "RunState",
    "StateBuilder",
    "TurnOf",
    "aspects_given_up",
    "derive_state",
    "first_turn_texts",
    "json_string",
    "ledger_paths",
    "question_block",
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
    first_question: str
    target: int
    history: list[tuple[str, str]] = field(default_factory=list)
    next_turn: int = 1
    next_question: str | None = None  # a follow-up already written (and paid for)
    failed_attempts: int = 0  # failed attempts of the next turn so far


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


TurnOf = Callable[[str, int], "tuple[str, int, Any] | Sequence[Any] | None"]
"""``(conv, turn) -> (latest kind, failed rows, ref)`` of a turn, or None when
it has no answer row; ``ref`` is whatever :data:`RowOf` turns into that row."""

RowOf = Callable[[Any], Mapping[str, Any]]

AnsweredOf = Callable[[Sequence[bytes], int], list[bool]]
"""``(conv ids as UTF-8, turn) -> [whether that turn's latest row is
"answered", per conv]``: the bulk form of the :data:`TurnOf` question that
most conversations of a resumed run answer yes to."""


class StateBuilder:
    """The resume plan, built from question rows streamed in file order
    against an index of the answer ledger (:data:`TurnOf`).

    Pure given its two callables: ``turn_of`` says where a turn stands and
    ``row_of`` fetches a latest row, which is only done for what the plan
    keeps (the history and question of conversations still pending), so a
    caller can index a big answer ledger by byte offset and never hold it.

    Rows come one at a time (:meth:`add`) or a block of columns at a time
    (:meth:`add_questions`, with ``answered_of`` asking the index about a
    whole block at once); the plan is the same either way.

    A turn's latest row decides it: ``answered`` moves the conversation on;
    ``skipped``, ``vetoed`` and ``rejected`` (and any other kind) end it, as
    asking again would get the same verdict, unless its kind is one of
    ``retry``; ``failed`` is retried until ``max_answer_attempts`` failed rows.
    A conversation ended after answered turns is counted ``short``."""

    def __init__(
        self,
        turn_of: TurnOf,
        row_of: RowOf,
        *,
        aspects: Sequence[str],
        min_turns: int,
        max_turns: int,
        max_answer_attempts: int,
        answered_of: AnsweredOf | None = None,
        scope: Scope | None = None,
        retry: Iterable[str] = (),
    ) -> None:
        """``retry``: answer kinds (``skipped``, ``vetoed``, ...) whose turns are
        asked again, as ``qa --retry`` wants after the knowledge base improved."""
        self._turn_of, self._row_of, self._answered_of = turn_of, row_of, answered_of
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
            if "conv" in row:
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
        found = self._turn_of(conv, turn)
        # Only a turn not asked yet (or failed with no question kept) needs its text.
        if found is None or found[0] == "failed":
            self._followups[(conv, turn)] = text

    def add_questions(self, block: QuestionBlock) -> None:
        """Take a block of rows at once: the same as :meth:`add` of each in
        file order (follow-ups and first turns touch disjoint state, so they
        may go in any order between them), with no Python code per first-turn
        row that ``answered_of`` says is finished, and only the texts the plan
        keeps decoded."""
        ids, aspects, texts, seqs = block.ids, block.aspects, block.texts, block.seqs
        if self._scope is not None and not self._scope.keeps_block(aspects, seqs):
            # Some rows are left out: take them one at a time (rare: after a settings change).
            for i in range(len(ids)):
                self.add({"id": ids[i].decode(), "aspect": aspects[i], "text": json_string(texts[i]),
                          "seq": seqs[i]})
            for conv, turn, text in block.followups:
                self.add_followup(conv, turn, text)
            return
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
        finished here. Without ``answered_of``, or when targets vary, a
        conversation answered through ``min_turns`` still needs its target."""
        if self._answered_of is None:
            return list(range(len(ids)))
        alive: Sequence[int] = range(len(ids))
        rest: list[int] = []
        for turn in range(1, self._min + 1):
            if not alive:
                break
            asked = ids if turn == 1 else [ids[i] for i in alive]
            answered = self._answered_of(asked, turn)
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
        turn_of = self._turn_of
        answered: list[Any] = []
        turn = 1
        while turn <= target:
            found = turn_of(conv, turn)
            if found is None:
                self._pend(conv, aspect, seq, text, target, turn, answered, text if turn == 1 else None, 0)
                return
            kind = found[0]
            if kind == "answered":
                answered.append(found[2])
                turn += 1
                continue
            if kind in self._retry:
                # Asked for again (``qa --retry``): the same question, a fresh count of failures.
                question = self._row_of(found[2]).get("question") or (text if turn == 1 else None)
                self._pend(conv, aspect, seq, text, target, turn, answered, question, 0)
                return
            if kind == "failed":
                failures = found[1]
                if failures < self._attempts:
                    # A later turn's question is only ever an accepted follow-up
                    # row (found by finish()): a failed row's text may be one
                    # that was rejected, and is never asked.
                    question = text if turn == 1 else None
                    self._pend(conv, aspect, seq, text, target, turn, answered, question, failures)
                    return
                self._gave_up += 1
            if answered:
                self._short += 1  # answered turns, then one that was not: short of its target
            break
        self._finished += 1

    def _pend(
        self, conv: str, aspect: str, seq: int, text: str, target: int, turn: int,
        answered: list[Any], question: str | None, failures: int,
    ) -> None:
        rows = [self._row_of(ref) for ref in answered]
        plan = ConvPlan(
            conv=conv, aspect=aspect, seq=seq, first_question=text, target=target,
            history=[(r["question"], r["answer"]) for r in rows], next_turn=turn,
            next_question=question, failed_attempts=failures,
        )
        self._pending.append(plan)
        if question is None:
            self._deferred.append(plan)

    def finish(
        self,
        events: Sequence[Mapping[str, Any]],
        *,
        per_aspect: int | None = None,
        max_stale_rounds: int | None = None,
        retry_short: bool = False,
    ) -> RunState:
        """The plan, once every question row was added; ``events`` are the
        event-ledger rows; the rest goes to :func:`aspects_given_up`."""
        self._sample_tail({})
        for plan in self._deferred:
            plan.next_question = self._followups.get((plan.conv, plan.next_turn))
        self._pending.sort(key=lambda p: p.seq)  # stable: ties stay in file order
        last_run, usage = _merge_runs(events)
        final, why = aspects_given_up(events, per_aspect, max_stale_rounds, retry_short)
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


@dataclass(slots=True)
class QuestionBlock:
    """Question-ledger rows as columns: first turns (``id``, ``aspect``,
    ``text``, ``seq`` of each, in file order) and follow-ups ``(conv, turn, text)``.
    Ids stay UTF-8 bytes: most are only looked up, and only kept plans need
    them as text. Texts stay JSON string bodies (valid ones: see
    :func:`json_string`) for the same reason: most are only counted."""

    ids: Sequence[bytes]
    aspects: list[str]
    texts: Sequence[bytes]
    seqs: list[int]
    followups: list[tuple[str, int, str]]


# A question-ledger line, whole, as pipeline.qa.graph writes it: a first turn, or
# a follow-up. A JSON string is [^"\\\x00-\x1f] (raw control characters are
# invalid) or an escape; a match starts a line and ends one, so it is one line.
_BODY: Final = rb'[^"\\\x00-\x1f]*(?:\\[^\x00-\x1f][^"\\\x00-\x1f]*)*'
_STRING: Final = rb'"(' + _BODY + rb')"'  # captured
_INT: Final = rb'(0|-?[1-9][0-9]{0,17})'  # what orjson reads as an int, leading zeros refused
_FIRST_ROW: Final = re.compile(
    rb'(?<![^\n])\{"id":"([0-9a-f]{16})","aspect":' + _STRING + rb',"text":' + _STRING
    + rb',"seq":' + _INT + rb'\}\n'
)
_FOLLOWUP_ROW: Final = re.compile(
    rb'(?<![^\n])\{"id":"' + _BODY + rb'","conv":' + _STRING + rb',"turn":' + _INT
    + rb',"text":' + _STRING + rb'\}\n'
)


def json_string(raw: bytes) -> str:
    """The value of one JSON string body (quotes stripped) that
    :func:`question_block` checked."""
    return orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()


def _json_strings(raw: Sequence[bytes], escaped: bool) -> list[str]:
    """The string values of JSON string bodies (quotes stripped), where
    ``escaped`` says whether any has a backslash; raises ``ValueError`` on bad
    UTF-8 or a bad escape, as orjson would on the line."""
    if not escaped:
        return list(map(bytes.decode, raw))
    return [orjson.loads(b'"' + r + b'"') if b"\\" in r else r.decode() for r in raw]


def question_block(block: bytes, end: int) -> QuestionBlock | None:
    """The rows of the whole lines ``block[:end]`` of a question ledger as
    columns, or None unless every line is a row in the form pipeline.qa.graph
    writes it (then parse the rows whole, which also names a bad line).

    Pure. This is what a resume spends its time on (a million rows), and one
    regular-expression pass per block costs a fraction of a dict per row.
    The texts are checked (UTF-8 and escapes) but not decoded: few are needed."""
    lines = block.count(b"\n", 0, end)
    firsts = _FIRST_ROW.findall(block, 0, end)
    follows = _FOLLOWUP_ROW.findall(block, 0, end) if len(firsts) < lines else []
    if len(firsts) + len(follows) != lines:
        return None
    ids, aspects, texts, seqs = zip(*firsts) if firsts else ((), (), (), ())
    escaped = block.find(b"\\", 0, end) >= 0
    try:
        names = dict(zip(raw := list(dict.fromkeys(aspects)), _json_strings(raw, escaped)))
        convs, turns, follow_texts = zip(*follows) if follows else ((), (), ())
        str(memoryview(block)[:end], "utf-8")  # every text is UTF-8, without a str per text
        if escaped:  # and every escape is sound
            deque(map(json_string, [t for t in texts if b"\\" in t]), maxlen=0)
        return QuestionBlock(
            ids=ids,
            aspects=list(map(names.__getitem__, aspects)),
            texts=texts,
            seqs=list(map(int, seqs)),
            followups=list(zip(_json_strings(convs, escaped), map(int, turns),
                               _json_strings(follow_texts, escaped))),
        )
    except ValueError:  # bad UTF-8 or escape: let the whole-row parser name the line
        return None


def first_turn_texts(block: bytes, end: int) -> list[str] | None:
    """The first-turn question texts of the whole lines ``block[:end]``, in
    file order, or None as :func:`question_block` says (then parse the rows)."""
    columns = question_block(block, end)
    if columns is None:
        return None
    return _json_strings(columns.texts, block.find(b"\\", 0, end) >= 0)


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
) -> RunState:
    """Derive the resume plan from ledger rows already read (see
    :class:`StateBuilder`, which ``pipeline.qa.stage.load_state`` feeds from the
    files without holding them)."""
    turns: dict[tuple[str, int], list[Any]] = {}
    for row in answer_rows:
        key = (row["conv"], int(row["turn"]))
        kind = row["kind"]
        entry = turns.get(key)
        failed = (entry[1] if entry else 0) + (kind == "failed")
        turns[key] = [kind, failed, row]
    builder = StateBuilder(
        lambda conv, turn: turns.get((conv, turn)),
        lambda row: row,  # type: ignore[no-any-return]
        aspects=aspects,
        min_turns=min_turns,
        max_turns=max_turns,
        max_answer_attempts=max_answer_attempts,
        scope=scope,
    )
    for row in question_rows:
        builder.add(row)
    return builder.finish(events, per_aspect=per_aspect, max_stale_rounds=max_stale_rounds)
