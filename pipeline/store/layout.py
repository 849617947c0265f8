"""The byte layout of ledger rows, for the scans that read a million of them
without parsing each: the only code that knows how a row looks on disk.

Pure. A row is written by :class:`pipeline.store.ledger.LedgerWriter` as
:func:`pipeline.jsonl.dumps_line` of a :mod:`pipeline.store.schema` row:
compact JSON, keys in schema order, UTF-8, one line. A resume reads every row
of both ledgers, and one regular-expression pass over a read block costs a
fraction of a dict per row, so:

:func:`answer_block`
    the turn key, kind and length of every line of an answer-ledger block
    whose every line starts ``{"conv":...,"turn":...,"kind":...`` (the
    question may come before the kind, as earlier versions wrote it), or None
:func:`question_block`
    the first-turn rows (``id``, ``aspect``, ``text``, ``seq``, and any fields
    after them, parsed) and follow-ups (``id``, ``conv``, ``turn``, ``text``)
    of a question-ledger block, as columns, or None

Each checks the fields it reads (a JSON string's escapes and UTF-8, an int as
JSON spells it). A question row's later fields are parsed (optional fields are
written only when not at their default, so most rows have none); the rest of
an answer row is not looked at, and is checked by the readers that parse the
row whole. When a scan
answers None the caller parses the block's rows instead, which also names a
bad line. ``tests/test_layout.py`` checks both against a plain JSON parse of
random ledgers: a change to the schema's leading fields or to how rows are
written fails there, not in a slow or wrong resume.

Turn keys: an index of the answer ledger keys a turn by the bytes
``<conv>","turn":<turn>`` (:func:`turn_key`), which is what a line holds
between ``{"conv":"`` and the comma after the turn when the conv needs no
JSON escape, so the scan takes the key from the line as it is.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import add
from typing import Any, Final

import orjson

from pipeline.store.schema import (
    ANSWER_FIELDS,
    ANSWER_KINDS,
    FOLLOWUP_FIELDS,
    QUESTION_FIELDS,
)

__all__ = [
    "QuestionBlock",
    "answer_block",
    "question_texts",
    "has_string_field",
    "json_string",
    "question_block",
    "turn_key",
    "turn_keys",
]


def _names(fields: Sequence[object], n: int) -> list[str]:
    return [f.name for f in fields[:n]]  # type: ignore[attr-defined]


# The scans read these leading fields, in this order; the schema promises
# never to change them (pipeline.store.schema: new fields go at the end).
if _names(ANSWER_FIELDS, 4) != ["conv", "turn", "kind", "question"]:  # pragma: no cover - a schema edit
    raise ImportError("pipeline.store.layout reads answer rows as conv, turn, kind, question first")
if _names(QUESTION_FIELDS, 4) != ["id", "aspect", "text", "seq"]:  # pragma: no cover
    raise ImportError("pipeline.store.layout reads question rows as id, aspect, text, seq first")
if _names(FOLLOWUP_FIELDS, 4) != ["id", "conv", "turn", "text"]:  # pragma: no cover
    raise ImportError("pipeline.store.layout reads follow-up rows as id, conv, turn, text first")

# A JSON string body: [^"\\\x00-\x1f] (raw control characters are invalid
# JSON) or an escape. No part of it matches a quote that ends the string, so
# a pattern never matches inside one; no part crosses a raw newline.
_BODY: Final = rb'[^"\\\x00-\x1f]*(?:\\[^\x00-\x1f][^"\\\x00-\x1f]*)*'
_STRING: Final = rb'"(' + _BODY + rb')"'  # captured
_INT: Final = rb'(0|-?[1-9][0-9]{0,17})'  # an int as orjson reads it: leading zeros refused
# The rest of a line after the fields a scan reads: more fields, or none.
_REST: Final = rb'(?:,[^\n]*)?\}\n'
_REST_CAPTURED: Final = rb'((?:,[^\n]*)?)\}\n'
_LINE_START: Final = rb'(?<![^\n])'

# ---------------------------------------------------------------- answer ledger

_TURN_SEP: Final = b'","turn":'

# A whole answer line: captured, the line, its turn key and its kind. The
# conv is printable ASCII but quote and backslash, so its bytes are its JSON
# spelling and its UTF-8 alike; the kind is one of the schema's kinds (a row
# of any other shape is parsed whole). The turn is 1 or more.
_ANSWER_LINE: Final = re.compile(
    rb'(\{"conv":"([\x20\x21\x23-\x5b\x5d-\x7e]*' + _TURN_SEP + rb'[1-9][0-9]{0,17}),'
    rb'(?:"question":"' + _BODY + rb'",)?"kind":"('
    + b"|".join(re.escape(k.encode()) for k in ANSWER_KINDS) + rb')"[^\n]*\n)'
)


def turn_key(conv: str, turn: int) -> bytes:
    """The key of turn ``turn`` of conversation ``conv`` (see the module
    docstring). One-to-one: a turn has no quote in it, so the last separator
    tells the conv from the turn."""
    return f'{conv}","turn":{turn}'.encode("utf-8", "surrogatepass")


def turn_keys(convs: Iterable[bytes], turn: int) -> Iterable[bytes]:
    """:func:`turn_key` of each conv (given as UTF-8) for one turn, lazily and
    with no Python code per conv."""
    return map(add, convs, repeat(_TURN_SEP + str(turn).encode()))


def answer_block(block: bytes, end: int) -> tuple[tuple[bytes, ...], list[int], tuple[bytes, ...]] | None:
    """``(turn keys, line lengths with the newline, kinds)`` of every line of
    ``block[:end]`` (whole lines) in order, or None unless each line is an
    answer row in the form written (then parse the rows).

    The row's other fields are not checked (see the module docstring)."""
    found = _ANSWER_LINE.findall(block, 0, end)
    if not found:
        return None
    lines, keys, kinds = zip(*found)
    lengths = list(map(len, lines))
    # Matches never overlap and each ends a line, so covering the block byte
    # for byte means every line matched from its first byte.
    if sum(lengths) != end:
        return None
    return keys, lengths, kinds


def has_string_field(data: bytes, name: str, value: str) -> bool:
    """Whether some row in ``data`` (raw ledger bytes, such as a file's last
    few KiB) has the string field ``name`` equal to ``value``, without parsing
    the rows (a match inside a longer string counts: a quick guess, not a read)."""
    return b'"' + name.encode() + b'":' + orjson.dumps(value) in data


# ---------------------------------------------------------------- question ledger

_FIRST_ROW: Final = re.compile(
    _LINE_START + rb'\{"id":"([0-9a-f]{16})","aspect":' + _STRING + rb',"text":' + _STRING
    + rb',"seq":' + _INT + _REST_CAPTURED
)
_FOLLOWUP_ROW: Final = re.compile(
    _LINE_START + rb'\{"id":"' + _BODY + rb'","conv":' + _STRING + rb',"turn":' + _INT
    + rb',"text":' + _STRING + _REST_CAPTURED
)
_FIRST_KEYS: Final = frozenset(f.name for f in QUESTION_FIELDS[:4]) | {"conv"}
_FOLLOWUP_KEYS: Final = frozenset(f.name for f in FOLLOWUP_FIELDS[:4])


@dataclass(slots=True)
class QuestionBlock:
    """Question-ledger rows as columns: first turns (``id``, ``aspect``,
    ``text``, ``seq`` of each, in file order) and follow-ups ``(conv, turn, text)``.
    Ids stay UTF-8 bytes: most are only looked up, and only kept plans need
    them as text. Texts stay JSON string bodies (checked ones: see
    :func:`json_string`) for the same reason: most are only counted.
    ``extras``: the fields after these of the first turns that have any
    (a schema field at a value other than its default), by position."""

    ids: Sequence[bytes]
    aspects: list[str]
    texts: Sequence[bytes]
    seqs: list[int]
    followups: list[tuple[str, int, str]]
    extras: dict[int, dict[str, Any]]


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


def _extras(tails: Sequence[bytes], leading: frozenset[str]) -> dict[int, dict[str, Any]]:
    """The fields in each non-empty ``tail`` (``,"k":v,...`` after the scanned
    fields), by position; ``ValueError`` when one is not JSON, or repeats a
    scanned key (a plain parse would take the later value)."""
    out: dict[int, dict[str, Any]] = {}
    if not any(tails):
        return out
    for i, tail in enumerate(tails):
        if tail:
            fields = orjson.loads(b"{" + tail[1:] + b"}")
            if not leading.isdisjoint(fields):
                raise ValueError("a scanned key again")
            out[i] = fields
    return out


def question_block(block: bytes, end: int) -> QuestionBlock | None:
    """The rows of the whole lines ``block[:end]`` of a question ledger as
    columns, or None unless every line is a row in the form written (then
    parse the rows whole, which also names a bad line).

    The texts are checked (UTF-8 and escapes) but not decoded: few are needed."""
    lines = block.count(b"\n", 0, end)
    firsts = _FIRST_ROW.findall(block, 0, end)
    follows = _FOLLOWUP_ROW.findall(block, 0, end) if len(firsts) < lines else []
    if len(firsts) + len(follows) != lines:
        return None
    ids, aspects, texts, seqs, tails = zip(*firsts) if firsts else ((), (), (), (), ())
    escaped = block.find(b"\\", 0, end) >= 0
    try:
        extras = _extras(tails, _FIRST_KEYS)
        names = dict(zip(raw := list(dict.fromkeys(aspects)), _json_strings(raw, escaped)))
        convs, turns, follow_texts, follow_tails = zip(*follows) if follows else ((), (), (), ())
        _extras(follow_tails, _FOLLOWUP_KEYS)
        str(memoryview(block)[:end], "utf-8")  # every text is UTF-8, without a str per text
        if escaped:  # and every escape in a text is sound
            deque(map(json_string, [t for t in texts if b"\\" in t]), maxlen=0)
        return QuestionBlock(
            ids=ids,
            aspects=list(map(names.__getitem__, aspects)),
            texts=texts,
            seqs=list(map(int, seqs)),
            followups=list(zip(_json_strings(convs, escaped), map(int, turns),
                               _json_strings(follow_texts, escaped))),
            extras=extras,
        )
    except ValueError:  # bad UTF-8 or escape: let the whole-row parser name the line
        return None


def question_texts(block: bytes, end: int) -> list[str] | None:
    """The question texts of the whole lines ``block[:end]``: the first-turn
    questions in file order, then the follow-ups in file order; None as
    :func:`question_block` says (then parse the rows)."""
    columns = question_block(block, end)
    if columns is None:
        return None
    return [*_json_strings(columns.texts, block.find(b"\\", 0, end) >= 0),
            *(text for _, _, text in columns.followups)]
