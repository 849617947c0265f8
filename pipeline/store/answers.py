"""The answer ledger indexed by turn: which row is the latest of each turn.

A turn (a conversation's question number n) may have several rows, one per
attempt; the latest is its outcome. :class:`AnswerIndex` is the one place
that says which it is, for everything that asks: the resume plan
(``pipeline.store.resume``), ``status`` and ``qa --dry-run``, the dataset
and the report (``pipeline.outputs``).

Every row of the ledger belongs to a turn: a string ``conv`` and an int
``turn`` of at least 1; a row without them is damage, named like a bad line
(:func:`pipeline.store.ledger.headless_answer`), as skipping it would drop an
answer without a word (rows in memory without them are left out). A ``kind``
that is not a string reads as ``""``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import accumulate, repeat
from operator import and_, lshift, not_, or_
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import orjson

from pipeline.store.layout import answer_block, turn_key, turn_keys
from pipeline.store.ledger import headless_answer, iter_blocks, iter_ledger_spans
from pipeline.store.schema import ANSWER_KINDS

__all__ = ["READ_BLOCK", "AnswerIndex", "SpanReader"]

# Read block when indexing: small enough that a block read is still in the
# CPU cache when the scan goes over it (256 KiB took 10% less time than
# 8 MiB on a million-row resume), and the per-block work is noise at that size.
READ_BLOCK: Final = 256 * 1024

# A turn's value: ref << 4 | kind code. The code is the kind's place in
# ANSWER_KINDS ("answered" is 0, so the common case needs no or-ing); _OTHER
# marks a kind outside them, kept aside. A ref is offset << 32 | length of
# the line (newline included) for a file, the row's position for rows.
_CODE_BITS: Final = 4
_CODE_MASK: Final = (1 << _CODE_BITS) - 1
_OTHER: Final = _CODE_MASK
_CODES: Final = {k: i for i, k in enumerate(ANSWER_KINDS)}
_BYTE_CODES: Final = {k.encode(): i for k, i in _CODES.items()}
_FAILED: Final = _CODES["failed"]
_ANSWERED: Final = _CODES["answered"]
if len(ANSWER_KINDS) >= _OTHER or _ANSWERED != 0:  # pragma: no cover - a schema edit
    raise ImportError("AnswerIndex packs up to 15 answer kinds, 'answered' first")
_MAX_OFFSET: Final = 1 << 60  # past this, a file ref no longer fits the packed value


class SpanReader:
    """Byte spans of a file by offset, served from the last aligned window read.

    Rows are read back in about file order (the dataset: rows are appended
    as answers arrive), so one ``pread`` of a 64 KiB window serves the next
    hundred-odd rows, where a ``pread`` per row was a system call per
    question. A span outside the window reads its own window."""

    WINDOW: Final = 64 * 1024

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._start = 0
        self._data = b""

    def read(self, offset: int, length: int) -> bytes:
        i = offset - self._start
        if i < 0 or i + length > len(self._data):
            self._start = offset - offset % self.WINDOW
            want = max(self.WINDOW, offset + length - self._start)
            self._data = os.pread(self._fd, want, self._start)
            i = offset - self._start
        return self._data[i : i + length]


def _key_of(row: Mapping[str, Any]) -> bytes | None:
    conv, turn = row.get("conv"), row.get("turn")
    if not isinstance(conv, str) or type(turn) is not int or turn < 1:
        return None
    return turn_key(conv, turn)


class AnswerIndex:
    """The latest row of every turn of an answer ledger, by reference: its
    kind, how many of the turn's rows failed, and where the row is, to read
    it back (:meth:`read`) only when it is needed.

    Build it from a file (:meth:`of_file`; close it, or use it as a context
    manager, as it keeps the file open to read rows back) or from rows in
    memory (:meth:`of_rows`). The answers are the same either way.

    Memory: one dict entry per turn, a ~26-byte key and an int (about 130
    bytes), where the rows themselves take about 1.5 KB each as dicts. Speed:
    a read block whose every line has the form written
    (:func:`pipeline.store.layout.answer_block`) is indexed with one
    regular-expression pass and C-level maps, no Python code per row; other
    blocks are parsed row by row."""

    def __init__(self, read: Callable[[int], dict[str, Any]],
                 rows: Callable[[], Iterable[tuple[Mapping[str, Any], int]]],
                 close: Callable[[], None] | None = None) -> None:
        """``read`` turns a ref back into its row; ``rows`` iterates every
        row with its ref, in ledger order. Use :meth:`of_file` or :meth:`of_rows`."""
        self._read, self._rows, self._close = read, rows, close
        self._turns: dict[bytes, int] = {}  # turn key -> ref << 4 | kind code
        self._fails: dict[bytes, int] = {}  # failed rows of a turn, for turns with any
        self._other_kinds: dict[bytes, str] = {}  # kinds outside ANSWER_KINDS, rare

    # ---- building

    @classmethod
    def of_rows(cls, rows: Iterable[Mapping[str, Any]]) -> AnswerIndex:
        """The index of rows in memory (held, for :meth:`read`); a ref is a position."""
        held: Sequence[Mapping[str, Any]] = rows if isinstance(rows, Sequence) else list(rows)
        index = cls(held.__getitem__, lambda: ((row, i) for i, row in enumerate(held)))  # type: ignore[arg-type]
        for i, row in enumerate(held):
            index._add(row, i)
        return index

    @classmethod
    def of_file(cls, path: str | os.PathLike[str], *, repair: bool = True,
                block_size: int = READ_BLOCK) -> AnswerIndex:
        """The index of an answer ledger, with the file rules of
        :func:`pipeline.store.ledger.iter_ledger` (``repair=False``: read-only,
        a torn tail skipped, for ``status`` beside a live run). A missing file
        is an empty ledger."""
        p = Path(path)
        try:
            fh = open(p, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            return cls(_no_row, lambda: ())
        spans = SpanReader(fh.fileno())

        def read(ref: int) -> dict[str, Any]:
            row: dict[str, Any] = orjson.loads(spans.read(ref >> 32, ref & 0xFFFFFFFF))
            return row

        def every_row() -> Iterator[tuple[Mapping[str, Any], int]]:
            for row, offset, length in iter_ledger_spans(p, block_size=block_size, repair=False):
                yield row, offset << 32 | (length + 1)

        index = cls(read, every_row, fh.close)
        try:
            for block in iter_blocks(p, block_size=block_size, repair=repair):
                scanned = answer_block(block.data, block.end)
                if scanned is not None and block.offset + block.end <= _MAX_OFFSET:
                    index._add_scanned(block.offset, *scanned)
                else:
                    for row, offset, length in block.spans():
                        if not index._add(row, offset << 32 | (length + 1)):
                            raise headless_answer(p, offset)
        except BaseException:
            fh.close()
            raise
        return index

    def _add(self, row: Mapping[str, Any], ref: int) -> bool:
        """Index one row (ledger order); False (nothing indexed) for a row of no turn."""
        key = _key_of(row)
        if key is None:
            return False
        kind = row.get("kind")
        kind = kind if isinstance(kind, str) else ""
        code = _CODES.get(kind, _OTHER)
        if code == _OTHER:
            self._other_kinds[key] = kind
        elif code == _FAILED:
            self._fails[key] = self._fails.get(key, 0) + 1
        self._turns[key] = ref << _CODE_BITS | code
        return True

    def _add_scanned(self, offset: int, keys: tuple[bytes, ...], lengths: list[int],
                     kinds: tuple[bytes, ...]) -> None:
        """Index the lines of one scanned block at once, no Python code per row."""
        starts = accumulate(lengths, initial=offset)  # one more than needed; zip stops
        refs = map(or_, map(lshift, starts, repeat(32)), lengths)
        packed = map(lshift, refs, repeat(_CODE_BITS))
        if kinds.count(b"answered") != len(kinds):  # code 0 needs no or-ing
            packed = map(or_, packed, map(_BYTE_CODES.__getitem__, kinds))
        self._turns.update(zip(keys, packed))
        if b"failed" in kinds:
            fails, i = self._fails, -1
            with contextlib.suppress(ValueError):  # index() raises past the last one
                while True:
                    i = kinds.index(b"failed", i + 1)
                    fails[keys[i]] = fails.get(keys[i], 0) + 1

    # ---- asking

    def turn(self, conv: str, turn: int) -> tuple[str, int, int] | None:
        """``(latest kind, failed rows, ref)`` of one turn, or None when it has
        no row; the ref goes to :meth:`read`."""
        key = turn_key(conv, turn)
        packed = self._turns.get(key)
        if packed is None:
            return None
        code = packed & _CODE_MASK
        kind = ANSWER_KINDS[code] if code != _OTHER else self._other_kinds[key]
        return kind, self._fails.get(key, 0), packed >> _CODE_BITS

    def answered(self, convs: Iterable[bytes], turn: int) -> list[bool]:
        """Whether the latest row of ``turn`` of each conversation (its id as
        UTF-8 bytes) is "answered": :meth:`turn` for many at once, with no
        Python code per conversation."""
        codes = map(and_, map(self._turns.get, turn_keys(convs, turn), repeat(_OTHER)), repeat(_CODE_MASK))
        return list(map(not_, codes))  # code 0 is "answered"

    def answered_row(self, conv: str, turn: int) -> dict[str, Any] | None:
        """The latest row of one turn when it is "answered", else None without
        reading anything."""
        packed = self._turns.get(turn_key(conv, turn))
        if packed is None or packed & _CODE_MASK != _ANSWERED:
            return None
        return self._read(packed >> _CODE_BITS)

    def read(self, ref: int) -> dict[str, Any]:
        """The row at a ref of :meth:`turn` or :meth:`rows`."""
        return self._read(ref)

    def rows(self) -> Iterator[tuple[Mapping[str, Any], int, bool]]:
        """Every row of the ledger again, in order, as ``(row, ref, latest)``:
        ``latest`` says whether it is the latest row of its turn. Read
        without repairing anything."""
        turns = self._turns
        for row, ref in self._rows():
            key = _key_of(row)
            yield row, ref, key is not None and turns.get(key, -1) >> _CODE_BITS == ref

    # ---- the file

    def close(self) -> None:
        """Close the ledger a file index reads back from."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> AnswerIndex:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _no_row(ref: int) -> dict[str, Any]:
    raise KeyError(ref)
