"""Dataset: XTuner conversation records built from the ledgers.

The rows it reads are defined in :mod:`pipeline.store.schema`; a turn's
outcome is its latest answer row (a retry appends a new one), and only turns
whose latest row is ``answered`` go into the dataset.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from pipeline.jsonl import write_jsonl_atomic

__all__ = ["conversation_record", "conversations_from", "write_dataset"]

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


def conversations_from(
    question_rows: Iterable[Mapping[str, Any]],
    row_of: RowOf,
    system_prompt: str,
    min_turns: int,
    max_turns: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Conversation records from the ledgers, in question-ledger order
    (``seq``, then file order). Each conversation takes turns 1..k while
    every one of them is answered (a vetoed, failed or missing turn ends it),
    at most ``max_turns``, and is emitted when k >= ``min_turns``.

    ``question_rows``: the first-turn question rows; ``row_of``: a turn's
    latest answer row (:meth:`pipeline.store.answers.AnswerIndex.answered_row`,
    which answers None for a turn not answered, sparing the read)."""
    for qid in _first_questions_in_order(question_rows):
        pairs = _answered_turns(row_of, qid, max_turns)
        if pairs and len(pairs) >= min_turns:
            yield conversation_record(system_prompt, pairs)


def _answered_turns(row_of: RowOf, conv: str, max_turns: int | None) -> list[tuple[str, str]]:
    """``(question, answer)`` of turns 1..k while every one is answered."""
    pairs: list[tuple[str, str]] = []
    k = 1
    while max_turns is None or k <= max_turns:
        row = row_of(conv, k)
        if row is None or row.get("kind") != "answered" or not row.get("answer"):
            break
        pairs.append((str(row.get("question", "")), str(row["answer"])))
        k += 1
    return pairs


def _first_questions_in_order(question_rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """Distinct question ids in ``seq`` order, then file order."""
    # Held compactly, as this runs at the end of a run on top of what the run
    # left: a 16-hex id as one int in an array (8 bytes; a (seq, n, str)
    # tuple cost ~200), other ids by position, seqs in a second array.
    ids, seqs = array("Q"), array("q")
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
    del seen
    count = len(ids)
    # The ledger is written in seq order, so the sort is usually skipped; when
    # it is not, the stable sort keeps file order among equal seqs.
    in_order = all(seqs[i] <= seqs[i + 1] for i in range(count - 1))
    positions: Iterable[int] = range(count) if in_order else sorted(range(count), key=seqs.__getitem__)
    for i in positions:
        yield odd_ids.get(i) or format(ids[i], "016x")


def write_dataset(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> int:
    """Write the dataset atomically (a reader never sees half a file);
    return how many records."""
    return write_jsonl_atomic(path, records)
