"""Run state: what the ledgers say was done, and what a run still has to do.

Pure: it takes ledger rows (or a lookup into an index of them, or blocks of
their raw bytes) and settings, and derives the plan a resumed run follows.
The QA graph, ``status`` and ``qa --dry-run`` all read it, so they cannot
disagree about where a run stands.

Ledgers under ``<out_dir>/state/``:

``questions.jsonl``  first-turn questions ``{"id", "aspect", "text", "seq"}`` and
                     follow-up questions ``{"id", "conv", "turn", "text"}``
``answers.jsonl``    one row per answer attempt of a turn (see ``pipeline.dataset``)
``events.jsonl``     run start/end, aspects given up, usage snapshots
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import not_
from pathlib import Path
from typing import Any, Final

import orjson

__all__ = [
    "AnsweredOf",
    "ConvPlan",
    "LEDGERS",
    "QuestionBlock",
    "RowOf",
    "RunState",
    "StateBuilder",
    "TurnOf",
    "derive_state",
    "ledger_paths",
    "question_block",
    "target_turns",
]

LEDGERS = ("questions", "answers", "events")


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
    """Everything a run needs to resume."""

    accepted: dict[str, list[str]]  # aspect -> accepted first-turn questions, in order
    exhausted: set[str]  # aspects given up after rounds with nothing new
    pending: list[ConvPlan]  # conversations with a turn still to ask, in seq order
    finished: int  # conversations that need nothing more
    gave_up: int  # conversations whose next turn failed max_answer_attempts times
    next_seq: int
    last_run: dict[str, Any] | None  # the last run_start/run_end pair, merged
    usage: dict[str, float]  # token and cost totals over all runs

    def total_questions(self) -> int:
        return sum(len(v) for v in self.accepted.values())


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
    asking again would get the same verdict; ``failed`` is retried until
    ``max_answer_attempts`` failed rows."""

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
    ) -> None:
        self._turn_of, self._row_of, self._answered_of = turn_of, row_of, answered_of
        self._min, self._max, self._attempts = min_turns, max_turns, max_answer_attempts
        self.accepted: dict[str, list[str]] = {a: [] for a in aspects}
        self._pending: list[ConvPlan] = []
        # Plans whose next question is a follow-up that may come later in the ledger.
        self._deferred: list[ConvPlan] = []
        self._followups: dict[tuple[str, int], str] = {}
        self._finished = self._gave_up = self._next_seq = 0

    def add(self, row: Mapping[str, Any]) -> None:
        """Take one question-ledger row (a first-turn question or a follow-up)."""
        if "conv" in row:
            self.add_followup(row["conv"], int(row["turn"]), row["text"])
            return
        conv, text, seq = row["id"], row["text"], int(row["seq"])
        aspect = row["aspect"]
        texts = self.accepted.get(aspect)
        if texts is None:
            texts = self.accepted[aspect] = []
        texts.append(text)
        if seq >= self._next_seq:
            self._next_seq = seq + 1
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
        row that ``answered_of`` says is finished."""
        ids, aspects, texts, seqs = block.ids, block.aspects, block.texts, block.seqs
        accepted = self.accepted
        for aspect in dict.fromkeys(aspects):  # new aspects in order of first appearance
            if aspect not in accepted:
                accepted[aspect] = []
        deque(map(list.append, map(accepted.__getitem__, aspects), texts), maxlen=0)
        if seqs:
            self._next_seq = max(self._next_seq, max(seqs) + 1)
        for i in self._unfinished(ids):
            self._plan(ids[i].decode(), aspects[i], seqs[i], texts[i])
        for conv, turn, text in block.followups:
            self.add_followup(conv, turn, text)

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
            if kind == "failed":
                failures = found[1]
                if failures < self._attempts:
                    question = self._row_of(found[2]).get("question") or (text if turn == 1 else None)
                    self._pend(conv, aspect, seq, text, target, turn, answered, question, failures)
                    return
                self._gave_up += 1
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

    def finish(self, events: Sequence[Mapping[str, Any]]) -> RunState:
        """The plan, once every question row was added; ``events`` are the event-ledger rows."""
        for plan in self._deferred:
            plan.next_question = self._followups.get((plan.conv, plan.next_turn))
        self._pending.sort(key=lambda p: p.seq)  # stable: ties stay in file order
        last_run, usage = _merge_runs(events)
        return RunState(
            accepted=self.accepted,
            exhausted={ev["aspect"] for ev in events if ev.get("event") == "aspect_exhausted"},
            pending=self._pending,
            finished=self._finished,
            gave_up=self._gave_up,
            next_seq=self._next_seq,
            last_run=last_run,
            usage=usage,
        )


@dataclass(slots=True)
class QuestionBlock:
    """Question-ledger rows as columns: first turns (``id``, ``aspect``,
    ``text``, ``seq`` of each, in file order) and follow-ups ``(conv, turn, text)``.
    Ids stay UTF-8 bytes: most are only looked up, and only kept plans need them as text."""

    ids: Sequence[bytes]
    aspects: list[str]
    texts: list[str]
    seqs: list[int]
    followups: list[tuple[str, int, str]]


# A question-ledger line, whole, as pipeline.graph writes it: a first turn, or
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


def _json_strings(raw: Sequence[bytes], escaped: bool) -> list[str]:
    """The string values of JSON string bodies (quotes stripped), where
    ``escaped`` says whether any has a backslash; raises ``ValueError`` on bad
    UTF-8 or a bad escape, as orjson would on the line."""
    if not escaped:
        return list(map(bytes.decode, raw))
    return [orjson.loads(b'"' + r + b'"') if b"\\" in r else r.decode() for r in raw]


def question_block(block: bytes, end: int) -> QuestionBlock | None:
    """The rows of the whole lines ``block[:end]`` of a question ledger as
    columns, or None unless every line is a row in the form pipeline.graph
    writes it (then parse the rows whole, which also names a bad line).

    Pure. This is what a resume spends its time on (a million rows), and one
    regular-expression pass per block costs a fraction of a dict per row."""
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
        return QuestionBlock(
            ids=ids,
            aspects=list(map(names.__getitem__, aspects)),
            texts=_json_strings(texts, escaped),
            seqs=list(map(int, seqs)),
            followups=list(zip(_json_strings(convs, escaped), map(int, turns),
                               _json_strings(follow_texts, escaped))),
        )
    except ValueError:  # bad UTF-8 or escape: let the whole-row parser name the line
        return None


def derive_state(
    question_rows: Iterable[Mapping[str, Any]],
    answer_rows: Iterable[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    *,
    aspects: Sequence[str],
    min_turns: int,
    max_turns: int,
    max_answer_attempts: int,
) -> RunState:
    """Derive the resume plan from ledger rows already read (see
    :class:`StateBuilder`, which ``pipeline.qa.load_state`` feeds from the
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
    )
    for row in question_rows:
        builder.add(row)
    return builder.finish(events)
