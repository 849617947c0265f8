"""The rows of the QA ledgers, defined once: their fields, their order on
disk, what each field means, and the functions that make a row.

Pure. Every row the pipeline writes to ``state/questions.jsonl`` or
``state/answers.jsonl`` is made here (:func:`question_row`,
:func:`followup_row`, :func:`answer_row`) and appended by
:class:`pipeline.store.ledger.LedgerWriter` as one compact JSON object per
line, keys in the order of the field tuples below. An optional field at its
default is not written (a row that does not use a field keeps the layout it
had before the field existed), so a reader takes it with
``row.get(name, <its default>)``.

Question ledger, one row per accepted question (:data:`QUESTION_FIELDS`:
of an aspect, or with ``aspect`` empty, of a corpus passage, :func:`is_from_passage`),
and one per follow-up question written for a later turn
(:data:`FOLLOWUP_FIELDS`); a row with a ``conv`` is a follow-up
(:func:`is_followup`).

Answer ledger, one row per answer attempt at one turn of a conversation
(:data:`ANSWER_FIELDS`). Retries append new rows; the latest row of a turn is
its outcome (:class:`pipeline.store.answers.AnswerIndex` says which row that
is). ``kind`` is one of :data:`ANSWER_KINDS`.

The byte layout is a contract too: the resume reads a million rows by
scanning their raw bytes for the leading fields (:mod:`pipeline.store.layout`,
tested against a plain JSON parse), so the order of the fields that are
there today never changes.

Adding a field (the only safe way):

1. Append a :class:`Field` with a ``default`` to the END of the tuple
   (after every existing field: the leading fields are what the fast scans
   read, and rows already on disk keep their layout).
2. Add a keyword parameter with the same name and default to the row's
   function; ``tests/test_schema.py`` checks the two agree.
3. Read it with ``row.get(name, <its default>)``, never ``row[name]``: rows
   that leave it at its default, and every row of an earlier version, do
   not have it, and a resume must go on from them.

Removing or renaming a field, or giving a new field no default, would break
resuming old ledgers: don't.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ANSWER_FIELDS",
    "ANSWER_KINDS",
    "FOLLOWUP_FIELDS",
    "QUESTION_FIELDS",
    "REQUIRED",
    "Field",
    "answer_row",
    "followup_row",
    "is_followup",
    "is_from_passage",
    "question_row",
]


class _Required:
    """The default of a field every row has had since the first version."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a ledger row: its key, what it means, and the value a row
    written before it existed stands for (:data:`REQUIRED`: none, every row has it)."""

    name: str
    meaning: str
    default: Any = REQUIRED


QUESTION_FIELDS: Final[tuple[Field, ...]] = (
    Field("id", "the question's id (pipeline.qa.questions.question_id: 16 hex digits of its "
                "text's hash); also the id of the conversation it starts"),
    Field("aspect", "the [questions] aspect it was written for"),
    Field("text", "the question, as asked"),
    Field("seq", "its place in the run's order of accepted questions (0, 1, ...; resumed runs go on)"),
    Field("passage", "the id of the corpus passage it was written from "
                     "(pipeline.qa.passages.passage_id); empty for an aspect's question", default=""),
    Field("file", "that passage's file, relative to [paths] data_dir; empty for an aspect's question",
          default=""),
    Field("span", "that passage's [start, end) in characters of the file's decoded text; "
                  "null for an aspect's question", default=None),
)

FOLLOWUP_FIELDS: Final[tuple[Field, ...]] = (
    Field("id", "the follow-up's own id (question_id of its text)"),
    Field("conv", "the conversation it belongs to: the id of its first question"),
    Field("turn", "the turn it asks, 2 or more"),
    Field("text", "the follow-up question, as asked"),
)

ANSWER_KINDS: Final[tuple[str, ...]] = ("answered", "skipped", "vetoed", "failed", "refused", "rejected")
"""What an answer attempt came to. ``answered``: the backend answered and the
answer gate let the answer through (the only kind that goes into the dataset);
``skipped``: the backend declined the question (no material, off-topic, not a
question); ``vetoed``: the backend produced an answer and withdrew it (an
irrelevant answer, a safety check); ``failed``: no usable reply (the backend or
something behind it failed, or no follow-up question could be written),
retried up to ``[run] max_answer_attempts``; ``refused``: the LLM provider's
content filter refused the prompt (the local backend's answer, or the
follow-up that would have asked this turn; ``state`` quotes the provider),
tried twice already; ``rejected``: the backend answered
and the answer gate refused it (``reason`` says why). Every kind but
``failed`` is final for its turn."""

ANSWER_FIELDS: Final[tuple[Field, ...]] = (
    Field("conv", "the conversation: the id of its first question"),
    Field("turn", "the turn, 1-based"),
    Field("kind", "what the attempt came to: one of ANSWER_KINDS"),
    Field("question", "the question asked"),
    Field("answer", "the gated, cleaned answer: what the dataset holds; empty unless kind is answered"),
    Field("raw_answer", "the backend's answer before the gate, as it came"),
    Field("refs", "the references the backend gave (file names or passages), a list of strings"),
    Field("state", "the backend's last state for the question (e.g. HuixiangDou's code), empty if none"),
    Field("reason", "why the gate refused the answer (kind rejected), else empty"),
    Field("server", "which backend server answered (a URL, or the local backend's name)"),
    Field("attempts", "how many requests this one attempt took (the backend's retries included)"),
    Field("seconds", "how long the attempt took, rounded to milliseconds"),
    Field("backend", "the answer backend that made it: 'huixiangdou' or 'local' (rows written before "
                     "the field: '', told apart by their server)", default=""),
    Field("edits", "the answer gate's rules that changed the answer (pipeline.qa.gate: cleaned, "
                   "references, lead_in, material_rewritten), a list of strings", default=()),
    Field("shape", "the id of the settings that shaped the row (pipeline.store.shape.shape_id of the "
                   "run's shape, recorded in full in its run_start event); empty before shapes were recorded",
          default=""),
)


def _row(fields: Sequence[Field], values: Mapping[str, Any]) -> dict[str, Any]:
    """A row with the keys of ``fields`` in their order, from ``values``;
    an optional field at its default is left out (a reader takes it back as
    the default), so rows that do not use a field keep the layout they had
    before it existed."""
    return {f.name: values[f.name] for f in fields
            if f.default is REQUIRED or values[f.name] != f.default}


def question_row(
    *, id: str, aspect: str, text: str, seq: int,  # noqa: A002 - the field's name
    passage: str = "", file: str = "", span: Sequence[int] | None = None,
) -> dict[str, Any]:
    """A question-ledger row for an accepted first-turn question: of an
    aspect, or (``aspect`` empty) of a corpus passage, with its id, file and span."""
    values = locals() | {"span": None if span is None else list(span)}
    return _row(QUESTION_FIELDS, values)


def is_from_passage(row: Mapping[str, Any]) -> bool:
    """Whether a first-turn question row was written from a corpus passage."""
    return bool(row.get("passage"))


def followup_row(*, id: str, conv: str, turn: int, text: str) -> dict[str, Any]:  # noqa: A002 - the field's name
    """A question-ledger row for a follow-up question (turn 2 or later)."""
    return _row(FOLLOWUP_FIELDS, locals())


def answer_row(
    *,
    conv: str,
    turn: int,
    kind: str,
    question: str,
    answer: str,
    raw_answer: str,
    refs: Sequence[str],
    state: str,
    reason: str,
    server: str,
    attempts: int,
    seconds: float,
    backend: str = "",
    edits: Sequence[str] = (),
    shape: str = "",
) -> dict[str, Any]:
    """An answer-ledger row for one attempt at one turn (see :data:`ANSWER_FIELDS`).
    ``seconds`` is rounded to milliseconds; ``refs`` and ``edits`` stored as lists."""
    if kind not in ANSWER_KINDS:
        raise ValueError(f"answer kind must be one of {', '.join(ANSWER_KINDS)}, not {kind!r}")
    # An unedited answer leaves "edits" out (its default); an edited one stores a list.
    values = locals() | {"refs": list(refs), "seconds": round(seconds, 3), "edits": list(edits) or ()}
    return _row(ANSWER_FIELDS, values)


def is_followup(row: Mapping[str, Any]) -> bool:
    """Whether a question-ledger row is a follow-up (else a first-turn question)."""
    return "conv" in row
