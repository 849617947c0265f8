"""Dataset: XTuner conversation records built from the ledgers, and the
side file saying where each record's first question came from.

The rows it reads are defined in :mod:`pipeline.store.schema`; a turn's
outcome is its latest answer row (a retry appends a new one), and only turns
whose latest row is ``answered`` go into the dataset.
"""

from __future__ import annotations

import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.jsonl import atomic_writer, dumps_line, write_jsonl_atomic
from pipeline.store.schema import is_from_passage
from pipeline.store.shape import Scope

__all__ = [
    "conversation_record",
    "conversations_with_sources",
    "provenance_path",
    "write_dataset",
    "write_dataset_with_sources",
]

# The latest row of a conversation's turn, or None when it has none.
RowOf = Callable[[str, int], Mapping[str, Any] | None]

_HEX16 = frozenset("0123456789abcdef")


def conversation_record(system_prompt: str, turns: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """An XTuner conversation record; the system prompt rides on the first
    turn only (XTuner prepends a system block to every turn that has one),
    and is left out when empty."""
    conversation: list[dict[str, str]] = []
    for i, (question, answer) in enumerate(turns):
        turn: dict[str, str] = {}
        if i == 0 and system_prompt:
            turn["system"] = system_prompt
        turn["input"] = question
        turn["output"] = answer
        conversation.append(turn)
    return {"conversation": conversation}


def conversations_with_sources(
    question_rows: Iterable[Mapping[str, Any]],
    row_of: RowOf,
    system_prompt: str,
    min_turns: int,
    max_turns: int | None = None,
    *,
    scope: Scope | None = None,
    left_out: Counter[str] | None = None,
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Conversation records from the ledgers, in question-ledger order
    (``seq``, then file order). Each conversation takes turns 1..k while
    every one of them is answered (a vetoed, failed or missing turn ends it),
    at most ``max_turns``, and is emitted when k >= ``min_turns``.

    ``question_rows``: the first-turn question rows; ``row_of``: a turn's
    latest answer row (:meth:`pipeline.store.answers.AnswerIndex.answered_row`,
    which answers None for a turn not answered, sparing the read).

    Each record comes with where its first question came from:
    ``{"conv": id, "source": "aspect", "aspect": ...}`` or
    ``{"conv": id, "source": "corpus", "passage": ..., "file": ..., "span": [start, end]}``.

    ``scope``: only the first-turn questions it keeps make conversations.
    ``left_out``, when given, counts the conversations with an answer that do
    not go in as they are, by why: out of scope (:meth:`Scope.why_out`),
    ``"cut to N turn(s)"`` (answered further than ``max_turns``: included, cut),
    ``"fewer than N answered turns"`` (short of ``min_turns``)."""
    if scope is not None:
        question_rows = _in_scope(question_rows, scope, row_of, left_out)
    sources: list[dict[str, Any]] = []
    for qid, source in _first_questions_in_order(question_rows, sources):
        pairs = _answered_turns(row_of, qid, max_turns)
        if pairs and len(pairs) >= min_turns:
            if left_out is not None and max_turns is not None and len(pairs) == max_turns \
                    and _answered(row_of(qid, max_turns + 1)):
                left_out[f"cut to {max_turns} turn{'s' * (max_turns != 1)}"] += 1
            yield conversation_record(system_prompt, pairs), {"conv": qid, **sources[source]}
        elif pairs and left_out is not None:
            left_out[f"fewer than {min_turns} answered turns"] += 1


def _in_scope(question_rows: Iterable[Mapping[str, Any]], scope: Scope, row_of: RowOf,
              left_out: Counter[str] | None) -> Iterator[Mapping[str, Any]]:
    """The first-turn rows ``scope`` keeps; the others with an answered first
    turn counted in ``left_out``."""
    aspects, by_topic = scope.aspects, bool(scope.other_topics)
    for row in question_rows:
        aspect = row.get("aspect")
        if not by_topic and (not aspect or aspect in aspects):  # the usual row, decided at once
            yield row
            continue
        seq = row.get("seq")
        why = scope.why_out(str(aspect or ""), seq if type(seq) is int else -1)
        if why is None:
            yield row
        elif left_out is not None and isinstance(row.get("id"), str) and _answered(row_of(row["id"], 1)):
            left_out[why] += 1


def _answered(row: Mapping[str, Any] | None) -> bool:
    return row is not None and row.get("kind") == "answered" and bool(row.get("answer"))


def _answered_turns(row_of: RowOf, conv: str, max_turns: int | None) -> list[tuple[str, str]]:
    """``(question, answer)`` of turns 1..k while every one is answered."""
    pairs: list[tuple[str, str]] = []
    k = 1
    while max_turns is None or k <= max_turns:
        row = row_of(conv, k)
        if row is None or not _answered(row):
            break
        pairs.append((str(row.get("question", "")), str(row["answer"])))
        k += 1
    return pairs


def _source_of(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """Where a first-turn question came from, as a hashable key (see
    :func:`conversations_with_sources`)."""
    if is_from_passage(row):
        span = row.get("span")
        return ("corpus", str(row["passage"]), str(row.get("file", "")),
                tuple(span) if isinstance(span, list) else ())
    return ("aspect", str(row.get("aspect", "")))


def _first_questions_in_order(
    question_rows: Iterable[Mapping[str, Any]], sources: list[dict[str, Any]]
) -> Iterator[tuple[str, int]]:
    """Distinct question ids in ``seq`` order, then file order, each with the
    index of its source in ``sources`` (filled here, each source once)."""
    # Held compactly, as this runs at the end of a run on top of what the run
    # left: a 16-hex id as one int in an array (8 bytes; a (seq, n, str)
    # tuple cost ~200), other ids by position, seqs in a second array, the
    # source as an index (a passage's few questions, an aspect's many share one).
    ids, seqs, where = array("Q"), array("q"), array("I")
    source_index: dict[tuple[Any, ...], int] = {}
    odd_ids: dict[int, str] = {}
    seen: set[int | str] = set()
    for n, row in enumerate(question_rows):
        qid = row.get("id")
        if not isinstance(qid, str):
            continue
        key: int | str = int(qid, 16) if len(qid) == 16 and _HEX16.issuperset(qid) else qid
        if key in seen:
            continue
        seen.add(key)
        seq = row.get("seq", n)
        seq = seq if isinstance(seq, int) and -(2**63) <= seq < 2**63 else n
        if isinstance(key, str):
            odd_ids[len(ids)] = qid
            key = 0
        ids.append(key)
        seqs.append(seq)
        source = _source_of(row)
        index = source_index.get(source)
        if index is None:
            index = source_index[source] = len(sources)
            sources.append({"source": "aspect", "aspect": source[1]} if source[0] == "aspect" else
                           {"source": "corpus", "passage": source[1], "file": source[2],
                            "span": list(source[3])})
        where.append(index)
    del seen, source_index
    count = len(ids)
    # The ledger is written in seq order, so the sort is usually skipped; when
    # it is not, the stable sort keeps file order among equal seqs.
    in_order = all(seqs[i] <= seqs[i + 1] for i in range(count - 1))
    positions: Iterable[int] = range(count) if in_order else sorted(range(count), key=seqs.__getitem__)
    for i in positions:
        yield odd_ids.get(i) or format(ids[i], "016x"), where[i]


def write_dataset(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> int:
    """Write the dataset atomically (a reader never sees half a file);
    return how many records."""
    return write_jsonl_atomic(path, records)


def provenance_path(dataset: str | os.PathLike[str]) -> Path:
    """The side file of ``dataset``: ``conversations.jsonl`` -> ``conversations.provenance.jsonl``."""
    p = Path(dataset)
    return p.with_name(f"{p.stem}.provenance.jsonl")


def write_dataset_with_sources(
    path: str | os.PathLike[str], pairs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]
) -> int:
    """Write the dataset (XTuner records only) and, beside it
    (:func:`provenance_path`), where each record came from: line ``n`` of
    the side file is ``{"line": n, "conv": ..., "source": ...}`` for line
    ``n`` of the dataset. Both atomically; return how many records."""
    count = 0
    with atomic_writer(path) as data, atomic_writer(provenance_path(path)) as side:
        for record, source in pairs:
            count += 1
            data.write(dumps_line(record))
            side.write(dumps_line({"line": count, **source}))
    return count
