"""What the answer ledger adds up to, for the report and ``status``: one
pass over its rows, holding none of them.

Counts of outcomes, backend states and gate reasons are over each turn's
latest row (the turn's outcome, as :class:`~pipeline.store.answers.AnswerIndex`
says); the row count and the RAG latencies are over every row (every attempt).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pipeline.store.answers import AnswerIndex

__all__ = ["AnswerStats", "Group", "answer_stats"]


class _Facts(NamedTuple):
    """What the counts need of one latest row, short of its texts. A ledger
    has a handful of distinct combinations, counted per combination."""

    kind: str  # str(row.get("kind", ""))
    state: str  # str(row.get("state", ""))
    state_group: str  # str(row.get("state") or "(none)")
    reason: str | None  # counted in by_reason (not answered, a reason given), else None
    reason_group: str  # str(row.get("reason") or "(none)")
    backend: str  # the backend that made it; rows older than the field: told by their server, "" if none


def _backend(row: Mapping[str, Any]) -> str:
    backend = row.get("backend")
    if isinstance(backend, str):
        return backend
    server = row.get("server")
    if not isinstance(server, str) or not server:
        return ""
    return "local" if server == "local" else "huixiangdou"


def _facts(row: Mapping[str, Any]) -> _Facts:
    kind = str(row.get("kind", ""))
    reason = row.get("reason")
    return _Facts(
        kind,
        str(row.get("state", "")),
        str(row.get("state") or "(none)"),
        str(reason) if kind != "answered" and reason else None,
        str(reason or "(none)"),
        _backend(row),
    )


@dataclass(slots=True)
class Group:
    """Latest rows that share a backend state (not answered) or a gate reason
    (rejected): how many, their most common kind, and the first distinct
    questions among them, in ledger order."""

    value: str
    count: int
    kind: str
    examples: list[str]


@dataclass(slots=True)
class AnswerStats:
    """The counts of one pass (:func:`answer_stats`); ``by_*`` most common first."""

    rows: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    by_state: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    by_backend: dict[str, dict[str, int]] = field(default_factory=dict)  # backend -> kind -> turns
    no_answer_states: list[Group] = field(default_factory=list)  # states of turns neither answered nor rejected
    gate_rejections: list[Group] = field(default_factory=list)  # reasons of rejected turns
    answer_chars: array[int] = field(default_factory=lambda: array("q"))  # per answered turn
    rag_seconds: array[float] = field(default_factory=lambda: array("d"))  # per row that took any


def answer_stats(answers: AnswerIndex, *, top: int, examples: int) -> AnswerStats:
    """The answer ledger's counts; ``top`` groups of each kind are listed,
    with up to ``examples`` example questions each."""
    stats = AnswerStats()
    facts: Counter[_Facts] = Counter()  # in order of first appearance: ties keep ledger order
    by_text: dict[tuple[Any, ...], _Facts] = {}
    states: dict[str, list[str]] = {}
    reasons: dict[str, list[str]] = {}
    chars, seconds_of = stats.answer_chars, stats.rag_seconds
    rows = 0
    for row, _, latest in answers.rows():
        rows += 1
        seconds = row.get("seconds")
        if isinstance(seconds, (int, float)) and seconds > 0:
            seconds_of.append(float(seconds))
        if not latest:
            continue
        # A row's facts follow from these values alone: worked out once per combination.
        key = (row.get("kind"), row.get("state"), row.get("reason"), row.get("backend"), row.get("server"))
        try:
            f = by_text.get(key)
        except TypeError:  # an unhashable value in a damaged row
            f = None
        if f is None:
            f = _facts(row)
            if all(type(v) is str or v is None for v in key):
                by_text[key] = f
        facts[f] += 1
        if f.kind == "answered":
            chars.append(len(str(row.get("answer", ""))))
        elif f.kind == "rejected":
            _example(reasons.setdefault(f.reason_group, []), row, examples)
        else:
            _example(states.setdefault(f.state_group, []), row, examples)
    stats.rows = rows
    by_kind: Counter[str] = Counter()
    by_state: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    by_backend: dict[str, Counter[str]] = {}
    for f, n in facts.items():
        by_kind[f.kind] += n
        by_state[f.state] += n
        if f.reason:
            by_reason[f.reason] += n
        if f.backend:
            by_backend.setdefault(f.backend, Counter())[f.kind] += n
    stats.by_backend = {b: {k: c[k] for k in sorted(c, key=lambda k: (-c[k], k))}
                        for b, c in sorted(by_backend.items())}
    stats.by_kind = dict(by_kind.most_common())
    stats.by_state = dict(by_state.most_common())
    stats.by_reason = dict(by_reason.most_common())
    stats.no_answer_states = _groups(
        ((f.state_group, f.kind, n) for f, n in facts.items() if f.kind not in ("answered", "rejected")),
        states, top)
    stats.gate_rejections = _groups(
        ((f.reason_group, f.kind, n) for f, n in facts.items() if f.kind == "rejected"), reasons, top)
    return stats


def _example(found: list[str], row: Mapping[str, Any], examples: int) -> None:
    if len(found) < examples:
        question = str(row.get("question", ""))
        if question and question not in found:
            found.append(question)


def _groups(members: Iterable[tuple[str, str, int]], examples: Mapping[str, list[str]], top: int) -> list[Group]:
    """The ``top`` most common groups of ``(value, kind, count)`` members (ties in order of first appearance)."""
    counts: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = {}
    for value, kind, n in members:
        counts[value] += n
        kinds.setdefault(value, Counter())[kind] += n
    return [Group(value, n, kinds[value].most_common(1)[0][0], examples.get(value, []))
            for value, n in counts.most_common(top)]
