"""Append-only JSONL ledgers under ``<out_dir>/state/``: the run's checkpoint.

Three pieces, each small:

``read_ledger`` / ``iter_ledger`` / ``iter_ledger_spans``
    Load a ledger at start-up. A torn last line (SIGKILL or power loss in the
    middle of an append) is cut off the file with a warning; a bad line anywhere
    else is corruption and raises :class:`~pipeline.errors.InputError` naming
    the file and line, because dropping it would silently lose a paid answer.
    Read-only (``repair=False``, for ``status`` beside a live run) a torn last
    line is skipped instead of cut.
``iter_answer_heads`` / ``AnswerIndex``
    The answer ledger is the big one (a row per answer attempt, most of its
    bytes the answer text). Start-up and the dataset build need only each
    row's ``conv``, ``turn`` and ``kind`` plus where the row is, so these read
    that head with one regular expression per read block and read a whole row
    back by byte offset when it is needed; lines the pattern does not fit are
    parsed whole, with the same errors as ``iter_ledger``.
``RunLock``
    One run per output folder: ``fcntl.flock`` on ``state/run.lock``, held on an
    open descriptor for the whole run, so a crashed holder's lock dies with its
    process and there is never a stale lock to clean up.
``LedgerWriter``
    The single writer task. Every stage hands it rows through one queue; it
    appends them, fsyncs per policy, and only then tells the caller the row is
    recorded. ``record`` is shielded: cancelling the caller (Ctrl-C) cannot
    separate "answer received" from "answer recorded".

What a "torn tail" is, precisely: every byte after the last newline (the
writer always ends a row with one, so such bytes were never acknowledged),
plus the last newline-terminated line if it is not a JSON object and the line
before it is sound (a power loss can persist a line's length but not its
bytes). Two bad lines in a row at the end are corruption, not a tear; they are
left in place for ``read_ledger`` to report. This keeps ``repair_tail``
idempotent: it never eats more than one complete line, however often it runs.

Row schemas belong to the stages; this module only sees dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import errno
import gc
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final, Literal, TypeAlias

import orjson

from pipeline.errors import InputError, LockedError, PipelineError
from pipeline.jsonl import dumps_line

try:  # POSIX only; kept importable elsewhere so the error can say why.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "AnswerHead",
    "AnswerIndex",
    "DEFAULT_FSYNC_INTERVAL_S",
    "FsyncPolicy",
    "LedgerError",
    "LedgerWriter",
    "RunLock",
    "iter_answer_heads",
    "iter_ledger",
    "iter_ledger_spans",
    "read_ledger",
    "repair_tail",
]

log = logging.getLogger(__name__)

FsyncPolicy: TypeAlias = Literal["line", "batch", "never"]
_POLICIES: Final = ("line", "batch", "never")

# Big reads amortise the syscall and split cost; 8 MiB keeps peak memory small
# next to the rows themselves.
_READ_BLOCK: Final = 8 * 1024 * 1024
# Backwards scans for the last lines only need a little of the file.
_TAIL_BLOCK: Final = 64 * 1024
# A bound on one drained batch keeps the latency of a single fsync bounded
# even when thousands of rows arrive at once.
_MAX_BATCH: Final = 4096
# The "batch" policy's default gap between the end of one sync and the start of
# the next. Every answer worker awaits its own record(), so this is latency
# added to a worker's cycle: small next to a RAG call (0.2-0.4 s), large next
# to an fsync that the page cache answers in well under a millisecond. 2 ms
# measured best on the overhead bench (10 ms starved its 4 answer workers).
DEFAULT_FSYNC_INTERVAL_S: Final = 0.002


class LedgerError(PipelineError):
    """A ledger could not be opened, written or synced; the message names the file.

    Rows in flight when it happened are not reported as recorded."""


# --------------------------------------------------------------------------- reading


def _is_sound(line: bytes) -> bool:
    """A line the readers accept: a JSON object, or blank (carries no data)."""
    if not line.strip():
        return True
    try:
        return type(orjson.loads(line)) is dict
    except orjson.JSONDecodeError:
        return False


def _rfind_newline(fd: int, end: int) -> int:
    """Offset of the last ``\\n`` in ``[0, end)``, or -1."""
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_BLOCK)
        chunk = os.pread(fd, pos - start, start)
        hit = chunk.rfind(b"\n")
        if hit >= 0:
            return start + hit
        pos = start
    return -1


def _line_before(fd: int, nl: int) -> tuple[int, bytes]:
    """The line ending at the newline at offset ``nl``: (start offset, bytes)."""
    prev = _rfind_newline(fd, nl)
    start = prev + 1
    return start, os.pread(fd, nl - start, start)


def repair_tail(path: str | os.PathLike[str]) -> int:
    """Cut a torn last line off ``path`` (see the module docstring for what
    counts as torn); return how many bytes were cut, 0 when the file is sound or
    missing. Logs a warning naming the file and byte offset when it cuts.

    Only reads the end of the file, so it is cheap on a large ledger. Call it
    at start-up, under the :class:`RunLock`, before anything appends."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        last_nl = _rfind_newline(fd, size)
        cut = last_nl + 1  # everything after the last newline is a fragment
        if last_nl >= 0:
            start, line = _line_before(fd, last_nl)
            if not _is_sound(line):
                before_ok = start == 0 or _is_sound(_line_before(fd, start - 1)[1])
                if before_ok:
                    cut = start
        if cut >= size:
            return 0
        os.ftruncate(fd, cut)
        os.fsync(fd)
        removed = size - cut
        log.warning(
            "ledger %s: cut a torn last line (%d bytes at byte offset %d) left by an "
            "interrupted write; that row was never acknowledged and will be redone",
            p,
            removed,
            cut,
        )
        return removed
    finally:
        os.close(fd)


def _corrupt(path: Path, lineno: int, offset: int, why: str) -> InputError:
    return InputError(
        f"{path}: line {lineno} (byte offset {offset}) {why}. The ledger is damaged in "
        "the middle, not just torn at the end, so nothing was dropped: fix or delete "
        "that line (or move the file aside to start that ledger over), then run again"
    )


def _parse_slow(path: Path, lines: list[bytes], first_lineno: int, offset: int) -> list[dict[str, Any]]:
    """Line-by-line parse of one block: skips blank lines, names the first bad one."""
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if line.strip():
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise _corrupt(path, first_lineno + i, offset, f"is not valid JSON ({exc})") from None
            if type(row) is not dict:
                raise _corrupt(path, first_lineno + i, offset, f"is a JSON {type(row).__name__}, not an object")
            rows.append(row)
        offset += len(line) + 1
    return rows


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Building millions of fresh, acyclic row dicts with the cyclic GC on costs
    # repeated passes over all of them: loading a million lines took 2-5x
    # longer. Nothing here creates cycles, so pausing it is safe.
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _line_blocks(path: Path, block_size: int, *, repair: bool = True) -> Iterator[tuple[bytes, int, int, int]]:
    """``path`` read a block at a time, after cutting a torn tail: each item is
    ``(block, end, lineno, offset)`` where ``block[:end]`` holds whole lines only,
    ``lineno`` is the number of its first line and ``offset`` its byte offset.
    A missing file yields nothing. ``repair=False`` reads without writing
    (``status`` beside a live run): nothing is cut, and bytes after the last
    newline are an append in flight, skipped."""
    if repair:
        repair_tail(path)
    try:
        fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in finally below
    except FileNotFoundError:
        return
    try:
        remaining = os.fstat(fh.fileno()).st_size
        leftover = b""
        lineno, offset = 1, 0
        while remaining > 0:
            chunk = fh.read(min(block_size, remaining))
            if not chunk:  # the file shrank under us; the lock should prevent it
                break
            remaining -= len(chunk)
            block = leftover + chunk
            end = block.rfind(b"\n") + 1
            leftover = block[end:]
            yield block, end, lineno, offset
            lineno += block.count(b"\n", 0, end)
            offset += end
        if repair and leftover.strip():
            # Unreachable after repair_tail unless someone appends concurrently.
            raise _corrupt(path, lineno, offset, "has no final newline (is another process writing?)")
    finally:
        fh.close()


def _parse_tolerant(
    path: Path, lines: list[bytes], first_lineno: int, offset: int
) -> tuple[list[dict[str, Any]], InputError | None]:
    """:func:`_parse_slow`, except that a bad *last* line comes back as an
    error for the caller to raise only if another line follows it (a torn
    tail, when nothing may be cut)."""
    rows = _parse_slow(path, lines[:-1], first_lineno, offset)
    last_offset = offset + sum(len(line) + 1 for line in lines[:-1])
    try:
        rows += _parse_slow(path, lines[-1:], first_lineno + len(lines) - 1, last_offset)
    except InputError as exc:
        return rows, exc
    return rows, None


def _row_blocks(
    path: Path, block_size: int, *, repair: bool = True
) -> Iterator[list[dict[str, Any]]]:
    """The rows of ``path`` one read block at a time (see :func:`iter_ledger`)."""
    loads = orjson.loads
    torn: InputError | None = None
    for block, end, lineno, offset in _line_blocks(path, block_size, repair=repair):
        if not end:
            continue
        if torn is not None:  # a bad line with a line after it is not a torn tail
            raise torn
        lines = block[: end - 1].split(b"\n")
        # Paused per block only, so the GC is back on whenever a caller's
        # code runs between blocks.
        with _gc_paused():
            try:
                # Fast path: one C-level loop per block. Blank or bad lines
                # fall through to the slow path, which names the culprit.
                rows = list(map(loads, lines))
                if not all(type(r) is dict for r in rows):
                    raise ValueError
            except ValueError:  # orjson.JSONDecodeError is a ValueError
                if repair:
                    rows = _parse_slow(path, lines, lineno, offset)
                else:
                    rows, torn = _parse_tolerant(path, lines, lineno, offset)
        yield rows


def iter_ledger(
    path: str | os.PathLike[str], *, block_size: int = _READ_BLOCK, repair: bool = True
) -> Iterator[dict[str, Any]]:
    """Yield the rows of a JSONL ledger in file order, reading big blocks.

    A missing file yields nothing. A torn tail is cut first (:func:`repair_tail`);
    any other bad line raises :class:`~pipeline.errors.InputError` with the file,
    line number and byte offset. Blank lines carry no data and are skipped. The
    file is read up to its size at the start, so rows appended meanwhile are not
    seen (there should be none: the run lock keeps writers out). ``block_size``
    is how much is read at a time; memory stays near one block of rows.

    ``repair=False`` never writes, for readers beside a live run (``status``):
    a torn last line, or bytes after the last newline (an append in flight),
    are skipped instead of cut."""
    for rows in _row_blocks(Path(path), block_size, repair=repair):
        yield from rows


def iter_ledger_spans(
    path: str | os.PathLike[str], *, block_size: int = _READ_BLOCK, repair: bool = True
) -> Iterator[tuple[dict[str, Any], int, int]]:
    """:func:`iter_ledger` with where each row is: ``(row, byte offset, byte
    length without the newline)``, so a caller that keeps only a row's span
    can read it back later with one ``pread``.

    Rows are parsed one at a time, not a block at once: a caller building a
    long-lived index from them (the answer tally) would otherwise interleave
    its entries with a block's worth of short-lived rows, and the memory those
    pin may stay with the process. Parsing row by row is also ~20% faster here."""
    p = Path(path)
    loads = orjson.loads
    torn: InputError | None = None
    for block, end, lineno, offset in _line_blocks(p, block_size, repair=repair):
        if not end:
            continue
        if torn is not None:  # a bad line with a line after it is not a torn tail
            raise torn
        lines = block[: end - 1].split(b"\n")
        last = len(lines) - 1
        for i, line in enumerate(lines):
            try:
                row = loads(line)
            except ValueError:  # orjson.JSONDecodeError is a ValueError
                row = None
            if type(row) is dict:
                yield row, offset, len(line)
            elif line.strip():  # bad: raise the error that names it, unless it may be a torn tail
                try:
                    _parse_slow(p, [line], lineno + i, offset)
                except InputError as exc:
                    if repair or i < last:
                        raise
                    torn = exc
            offset += len(line) + 1


def read_ledger(
    path: str | os.PathLike[str], *, block_size: int = _READ_BLOCK
) -> list[dict[str, Any]]:
    """All rows of a JSONL ledger; ``[]`` when the file is missing or empty.

    Same rules as :func:`iter_ledger`: a torn tail is cut off the file with a
    warning, a bad line elsewhere raises :class:`~pipeline.errors.InputError`."""
    out: list[dict[str, Any]] = []
    with _gc_paused():  # no caller code runs inside, so pause it throughout
        for rows in _row_blocks(Path(path), block_size):
            out.extend(rows)
    return out


# --------------------------------------------------------------------------- answer heads

AnswerHead: TypeAlias = tuple[str, int, str, int, int]
"""``(conv, turn, kind, byte offset, byte length)`` of one answer-ledger row."""

# The head of an answer row as pipeline.graph writes it: conv, turn, the
# question, kind (kind third, question skipped, is read too: a writer that puts
# the short keys first spares the scan the question text). A JSON string body
# is [^"\\]*(?:\\.[^"\\]*)*, so this never matches inside a string, and only
# a match at a line start counts; turn 0 does not match (not a valid turn).
_HEAD: Final = re.compile(
    rb'\{"conv":"([^"\\]*)","turn":([1-9][0-9]*),'
    rb'(?:"question":"[^"\\]*(?:\\.[^"\\]*)*",)?"kind":"([^"\\]*)"'
)


def _head_of_row(row: dict[str, Any]) -> tuple[str, int, str] | None:
    conv, turn, kind = row.get("conv"), row.get("turn"), row.get("kind", "")
    if not isinstance(conv, str) or type(turn) is not int or turn < 1:
        return None
    return conv, turn, kind if isinstance(kind, str) else ""


def _heads_slow(path: Path, block: bytes, end: int, lineno: int, offset: int) -> Iterator[AnswerHead]:
    """Line by line: the head pattern where it fits, else a full parse that names a bad line."""
    pos = 0
    while pos < end:
        nl = block.index(b"\n", pos, end)
        line = block[pos:nl]
        m = _HEAD.match(line)
        if m is not None:
            yield m[1].decode(), int(m[2]), m[3].decode(), offset + pos, nl + 1 - pos
        elif line.strip():
            row = _parse_slow(path, [line], lineno, offset + pos)[0]
            head = _head_of_row(row)
            if head is not None:
                yield *head, offset + pos, nl + 1 - pos
        pos = nl + 1
        lineno += 1


def iter_answer_heads(
    path: str | os.PathLike[str], *, block_size: int = _READ_BLOCK
) -> Iterator[AnswerHead]:
    """The head of every answer-ledger row with a string ``conv`` and an
    integer ``turn`` >= 1, in file order (rows without are skipped; a missing
    ``kind`` reads as ``""``). Same file rules as :func:`iter_ledger`: the torn
    tail is cut first, a bad line elsewhere raises
    :class:`~pipeline.errors.InputError` naming it.

    Rows whose head the pattern reads are not parsed whole, which is what
    makes this several times faster than :func:`iter_ledger` on a big ledger;
    a line of corrupt bytes after a well-formed head is therefore only found
    when that row is read back."""
    p = Path(path)
    finditer = _HEAD.finditer
    for block, end, lineno, offset in _line_blocks(p, block_size):
        lines = block.count(b"\n", 0, end)
        starts: list[int] = []
        heads: list[tuple[bytes, bytes, bytes]] = []
        for m in finditer(block, 0, end):
            s = m.start()
            if s and block[s - 1] != 10:  # not at a line start: leave it to the slow path
                break
            starts.append(s)
            heads.append(m.groups())  # type: ignore[arg-type]
        if len(starts) == lines:
            # Every line is a row with a readable head: the next start ends a row.
            starts.append(end)
            for i, (conv, turn, kind) in enumerate(heads):
                s = starts[i]
                yield conv.decode(), int(turn), kind.decode(), offset + s, starts[i + 1] - s
        else:
            yield from _heads_slow(p, block, end, lineno, offset)


class AnswerIndex(Mapping[str, Mapping[int, Mapping[str, Any]]]):
    """``conv -> turn -> latest row`` of an answer ledger, as
    :func:`pipeline.dataset.latest_turns` makes it, holding only each turn's
    latest kind, count of failed rows and byte span, and reading a row back
    when asked. Use as a context manager (it keeps the file open).

    Memory: one dict entry of two ints per turn (about 100 bytes), where the
    rows themselves take about 1.5 KB each as dicts."""

    # Packed value: offset << 48 | length << 16 | failed rows << 3 | kind code.
    _KINDS: Final = ("answered", "skipped", "vetoed", "failed", "rejected")

    def __init__(self, path: str | os.PathLike[str], *, block_size: int = _READ_BLOCK) -> None:
        self._path = Path(path)
        # A caller building the index late in a run (the dataset) passes a small
        # block: the block and its copy are transient, but they add to the peak.
        self._block_size = block_size
        # (conv, turn) -> packed; the key is one int when the conv is a
        # 16-hex question id (36 bytes against a 90-byte tuple of a string).
        self._turns: dict[int | str, int] = {}
        self._other_kinds: dict[int | str, str] = {}  # kinds outside _KINDS, rare
        self._fh: BinaryIO | None = None

    def __enter__(self) -> AnswerIndex:
        try:
            self._fh = open(self._path, "rb")  # noqa: SIM115 - closed in __exit__
        except FileNotFoundError:
            return self
        turns, codes, failed = self._turns, {k: i for i, k in enumerate(self._KINDS)}, 3
        for conv, turn, kind, offset, length in iter_answer_heads(self._path, block_size=self._block_size):
            key = span_key(conv, turn)
            code = codes.get(kind, 7)
            if code == 7:
                self._other_kinds[key] = kind
            old = turns.get(key)
            fails = 0 if old is None else (old >> 3) & 0x1FFF
            if code == failed and fails < 0x1FFF:
                fails += 1
            turns[key] = offset << 48 | min(length, 0xFFFFFFFF) << 16 | fails << 3 | code
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def turn(self, conv: str, turn: int) -> tuple[str, int, int] | None:
        """``(latest kind, failed rows, packed span)`` of one turn, or None
        when it has no row; the span goes to :meth:`read`."""
        key = span_key(conv, turn)
        packed = self._turns.get(key)
        if packed is None:
            return None
        code = packed & 7
        kind = self._KINDS[code] if code < 5 else self._other_kinds.get(key, "")
        return kind, (packed >> 3) & 0x1FFF, packed >> 16

    def read(self, span: int) -> dict[str, Any]:
        """The row at a span of :meth:`turn`."""
        if self._fh is None:
            raise ValueError(f"{self._path} is not open")
        row: dict[str, Any] = orjson.loads(os.pread(self._fh.fileno(), span & 0xFFFFFFFF, span >> 32))
        return row

    def _row(self, conv: str, turn: int) -> dict[str, Any] | None:
        found = self.turn(conv, turn)
        return None if found is None or self._fh is None else self.read(found[2])

    def __getitem__(self, conv: str) -> Mapping[int, Mapping[str, Any]]:
        if self._row(conv, 1) is None and not any(self._convs_turns(conv)):
            raise KeyError(conv)
        return _Turns(self, conv)

    def get(self, conv: str, default: Any = None) -> Any:
        # Without the membership check of __getitem__: a conversation with no
        # turn recorded reads as one whose first turn is missing, the same verdict.
        return _Turns(self, conv)

    def _convs_turns(self, conv: str) -> Iterator[int]:
        for key in self._turns:
            c, t = split_key(key)
            if c == conv:
                yield t

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(split_key(k)[0] for k in self._turns))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Turns(Mapping[int, Mapping[str, Any]]):
    """One conversation's turns in an :class:`AnswerIndex`, read on demand."""

    __slots__ = ("_conv", "_index")

    def __init__(self, index: AnswerIndex, conv: str) -> None:
        self._index, self._conv = index, conv

    def __getitem__(self, turn: int) -> Mapping[str, Any]:
        row = self._index._row(self._conv, turn)
        if row is None:
            raise KeyError(turn)
        return row

    def __bool__(self) -> bool:
        return True  # emptiness shows as a missing first turn; no scan of the index

    def __iter__(self) -> Iterator[int]:
        return self._index._convs_turns(self._conv)

    def __len__(self) -> int:
        return sum(1 for _ in self)


_HEX16: Final = frozenset("0123456789abcdef")


def span_key(conv: str, turn: int) -> int | str:
    """A compact dict key for ``(conv, turn)``: one int for a 16-hex id."""
    if len(conv) == 16 and turn < 256 and _HEX16.issuperset(conv):
        return int(conv, 16) << 8 | turn
    return f"{conv}\t{turn}"


def split_key(key: int | str) -> tuple[str, int]:
    """``(conv, turn)`` of a :func:`span_key`."""
    if isinstance(key, int):
        return f"{key >> 8:016x}", key & 0xFF
    conv, _, turn = key.rpartition("\t")
    return conv, int(turn)


# --------------------------------------------------------------------------- run lock


class RunLock:
    """Exclusive use of ``<out_dir>`` by one run, as a context manager.

    The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``<out_dir>/state/run.lock``,
    held by an open descriptor for the whole run: the kernel drops it when the
    process dies, however it dies, so there is no stale lock to clean up. The
    file also records the holder's pid, host and start time for the message a
    second run gets. flock works per open file, so even a second ``RunLock`` in
    the same process is refused. (flock is advisory and unreliable on some
    network file systems; keep ``out_dir`` on a local disk.)"""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "state" / "run.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`~pipeline.errors.LockedError` naming the holder."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        if fcntl is None:  # pragma: no cover - Windows
            raise PipelineError("the run lock needs a POSIX system (fcntl.flock)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: a child process must not inherit (and so prolong) the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = holder.get("pid")
                where = f"pid {pid}" if isinstance(pid, int) else "pid unknown"
                if holder.get("host") and holder.get("host") != socket.gethostname():
                    where += f" on {holder['host']}"
                started = holder.get("started") or "at an unknown time"
                raise LockedError(
                    f"{_display_dir(self.out_dir)} is in use by another run ({where}, started "
                    f"{started}); wait for it or stop it",
                    pid=pid if isinstance(pid, int) else None,
                ) from None
            raise LedgerError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        # The lock file is never unlinked: unlinking a locked file lets a late
        # opener lock the dead inode while a newcomer locks a fresh one.
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, orjson.dumps(info, option=orjson.OPT_APPEND_NEWLINE), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up; does nothing when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Empty the file first so nobody reads a finished run's pid as a holder.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _display_dir(out_dir: Path) -> str:
    return str(out_dir).rstrip(os.sep) + os.sep


def _read_holder(fd: int) -> dict[str, Any]:
    # The holder may be between truncate and write; an empty or odd file is fine.
    try:
        data = os.pread(fd, 4096, 0)
        info = orjson.loads(data) if data.strip() else {}
    except (OSError, orjson.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


# --------------------------------------------------------------------------- writer

_Item: TypeAlias = tuple[str, Any, "asyncio.Future[None] | None"]
_CLOSE: Final = ("", None, None)  # sentinel; compared by identity
_TICK: Final = ("<tick>", None, None)  # the group-commit timer is due; compared by identity


def _retrieve(fut: asyncio.Future[None]) -> None:
    # A caller cancelled while its row was being written no longer awaits the
    # future; fetch any exception so asyncio does not log it as unretrieved.
    # The error itself still surfaces from LedgerWriter.run().
    if not fut.cancelled():
        fut.exception()


class LedgerWriter:
    """The single writer of the run's ledgers.

    ``paths`` maps ledger names (``"questions"``, ``"answers"``, ...) to files.
    Start :meth:`run` as a task, hand it rows with :meth:`record` (await
    durability) or :meth:`append` (fire and forget), and stop it with
    :meth:`close`, after which :meth:`run` writes what is queued and returns.

    Each row is one line (:func:`pipeline.jsonl.dumps_line`). ``fsync``:
    ``"line"`` syncs after every row; ``"batch"`` is a group commit: rows are
    written as soon as they are drained, and one sync covers everything written
    since the last, but a sync starts no sooner than ``fsync_interval_s`` after
    the previous one ended (rows written meanwhile wait for it; ``close`` syncs
    at once); ``"never"`` leaves it to the OS (survives a process crash, not a
    power loss). Every row reaches the file at once under every policy, so a
    process crash loses nothing acknowledged or not; a row's future resolves
    only once it is written and synced per the policy.

    Why an interval: under load with a fast disk each drained batch holds a row
    or two, so syncing per batch meant one fsync (and thread hop) per row or
    two, most of the process's system time. The interval caps syncs at about
    ``1 / fsync_interval_s`` a second whatever the load, at the cost of up to
    that much latency on a ``record``.

    Why plain ``os.write`` on an ``O_APPEND`` descriptor and not aiofiles:
    aiofiles sends every call to a thread, which costs more than appending a
    short line to the page cache takes, and one syscall per batch keeps each
    line whole. Only ``fsync`` can block for long (milliseconds to seconds on
    slow disks), so that alone runs in a worker thread.

    ``fsync_fn``, ``write_fn``, ``clock`` and ``sleep`` are seams for tests
    (count syncs, fake a full disk, drive the interval without waiting); they
    default to ``os.fsync``, ``os.write``, ``time.monotonic`` and ``asyncio.sleep``."""

    def __init__(
        self,
        paths: Mapping[str, str | os.PathLike[str]],
        fsync: FsyncPolicy = "batch",
        *,
        fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S,
        fsync_fn: Callable[[int], None] = os.fsync,
        write_fn: Callable[[int, memoryview], int] = os.write,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if fsync not in _POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(_POLICIES)}, not {fsync!r}")
        if not paths:
            raise ValueError("LedgerWriter needs at least one ledger path")
        if not fsync_interval_s >= 0:  # also refuses NaN
            raise ValueError(f"fsync_interval_s must be >= 0, not {fsync_interval_s!r}")
        self.paths: dict[str, Path] = {name: Path(p) for name, p in paths.items()}
        self.fsync = fsync
        self.rows_written: dict[str, int] = dict.fromkeys(self.paths, 0)
        self.fsync_interval_s = fsync_interval_s
        self._fsync_fn = fsync_fn
        self._write_fn = write_fn
        self._clock = clock
        self._sleep = sleep
        # "batch": rows written but not yet synced, and when a sync may start.
        self._unsynced: list[asyncio.Future[None] | None] = []
        self._unsynced_rows: dict[str, int] = {}
        self._next_sync = float("-inf")
        self._timer: asyncio.Task[None] | None = None
        # Unbounded on purpose: every producer awaits its own record(), so the
        # queue never holds more than one row per producer task, and put_nowait
        # lets record() enqueue synchronously, before any cancellation can land.
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._closed = False
        self._started = False
        self._error: BaseException | None = None
        self._fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._fd_lock = threading.Lock()

    @property
    def queue(self) -> asyncio.Queue[_Item]:
        """The input queue of ``(ledger_name, row, done_future | None)``."""
        return self._queue

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the writer failed."""
        return self._closed

    def _check(self, name: str) -> None:
        if self._closed:
            why = f" after an error: {self._error}" if self._error else ""
            raise LedgerError(f"ledger writer is closed{why}; row for {name!r} not recorded")
        if name not in self.paths:
            raise KeyError(f"unknown ledger {name!r}; known: {', '.join(sorted(self.paths))}")

    def record(self, name: str, row: Mapping[str, Any]) -> Awaitable[None]:
        """Queue ``row`` for ledger ``name`` now; the returned awaitable resolves
        when it is durable per the fsync policy, or raises :class:`LedgerError`
        (``CancelledError`` if the writer itself is cancelled first).

        This is a plain function, so the row is queued before the caller can be
        cancelled, and the awaitable is shielded: cancelling the awaiting task
        (Ctrl-C) does not stop the row from being written."""
        self._check(name)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._queue.put_nowait((name, row, fut))
        return asyncio.shield(fut)

    def append(self, name: str, row: Mapping[str, Any]) -> None:
        """Queue ``row`` without waiting; a failure to write it surfaces from :meth:`run`."""
        self._check(name)
        self._queue.put_nowait((name, row, None))

    def close(self) -> None:
        """Stop taking rows; :meth:`run` writes everything queued so far and returns."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_CLOSE)

    async def run(self) -> None:
        """Consume the queue until :meth:`close`; raise :class:`LedgerError` on a
        failed open, write or sync (after failing every row still pending)."""
        if self._started:
            raise RuntimeError("LedgerWriter.run() can only run once")
        self._started = True
        batch: list[_Item] = []
        try:
            for name, path in self.paths.items():
                self._open(name, path)
            while True:
                batch = [await self._queue.get()]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except asyncio.QueueEmpty:
                        break
                if await self._write_batch(batch):
                    return
        except BaseException as exc:
            self._closed = True
            self._error = exc
            failure = _as_row_failure(exc)
            for _, _, fut in batch:  # settled ones are skipped
                _settle(fut, failure)
            for fut in self._unsynced:  # written but not synced: not durable
                _settle(fut, failure)
            self._fail_queued(failure)
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._close_fds()

    def _close_fds(self) -> None:
        # If run() was cancelled during a sync, the thread may still be inside
        # fsync on these descriptors; the lock makes us wait for it (one fsync
        # at most) rather than close a descriptor under it.
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def _open(self, name: str, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A fragment left by an earlier crash would glue onto our first line.
            repair_tail(path)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc.strerror or exc}") from exc
        self._fds[name] = fd
        self._sizes[name] = os.fstat(fd).st_size

    async def _write_batch(self, batch: list[_Item]) -> bool:
        """Write one drained batch; return True when it held the close sentinel."""
        closing = False
        bad_row: LedgerError | None = None
        # name -> [(line, future)] in queue order; per-file order is what matters.
        groups: dict[str, list[tuple[bytes, asyncio.Future[None] | None]]] = {}
        for item in batch:
            if item is _CLOSE:
                closing = True
                continue
            if item is _TICK:  # only wakes the loop; the sync check below runs anyway
                continue
            name, row, fut = item
            if closing:  # only reachable if someone bypassed record()/append()
                _settle(fut, LedgerError(f"row for {name!r} arrived after close; not recorded"))
                continue
            try:
                line = dumps_line(row)
            except TypeError as exc:  # orjson.JSONEncodeError
                err = LedgerError(f"row for ledger {name!r} cannot be written as JSON: {exc}")
                if fut is None:
                    bad_row = bad_row or err  # nobody to tell but run()'s caller
                _settle(fut, err)
                continue
            groups.setdefault(name, []).append((line, fut))

        if self.fsync == "line":
            for name, entries in groups.items():
                for i, (line, fut) in enumerate(entries):
                    self._write(name, line, len(entries) - i)
                    await self._sync([self._fds[name]], name, len(entries) - i)
                    self.rows_written[name] += 1
                    _settle(fut)
        elif self.fsync == "batch":
            unsynced, counts = self._unsynced, self._unsynced_rows
            for name, entries in groups.items():
                self._write(name, b"".join(line for line, _ in entries), len(entries))
                counts[name] = counts.get(name, 0) + len(entries)
                unsynced.extend(fut for _, fut in entries if fut is not None)
            if counts:
                if closing or self._clock() >= self._next_sync:
                    await self._sync_unsynced()
                elif self._timer is None or self._timer.done():
                    self._timer = asyncio.create_task(self._wake_at_next_sync())
        else:
            for name, entries in groups.items():
                self._write(name, b"".join(line for line, _ in entries), len(entries))
                self.rows_written[name] += len(entries)
                for _, fut in entries:
                    _settle(fut)
        if bad_row is not None:
            raise bad_row
        return closing

    def _write(self, name: str, data: bytes, rows: int) -> None:
        fd = self._fds[name]
        view = memoryview(data)
        try:
            while view:
                n = self._write_fn(fd, view)
                if n <= 0:  # a regular file never does this; refuse to spin
                    raise OSError(errno.EIO, "write made no progress")
                view = view[n:]
        except OSError as exc:
            # Cut back any partial line so the file stays a clean JSONL file;
            # if even that fails, repair_tail fixes it at the next start.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._sizes[name])
            raise LedgerError(
                f"cannot append to ledger {self.paths[name]}: {exc.strerror or exc}; "
                f"{rows} row(s) not recorded"
            ) from exc
        self._sizes[name] += len(data)

    async def _sync_unsynced(self) -> None:
        """One sync over every ledger written since the last; then settle those rows."""
        counts = self._unsynced_rows
        await self._sync([self._fds[n] for n in counts], ", ".join(counts), sum(counts.values()))
        # Measured from the end of the sync, so a slow disk is not asked again
        # at once: the interval bounds syncs per second however long each takes.
        self._next_sync = self._clock() + self.fsync_interval_s
        for name, n in counts.items():
            self.rows_written[name] += n
        futs, self._unsynced, self._unsynced_rows = self._unsynced, [], {}
        for fut in futs:
            _settle(fut)

    async def _wake_at_next_sync(self) -> None:
        # A task, not a timeout on the queue read, so the writer keeps draining
        # and writing rows at once while the sync waits; the tick re-enters the
        # loop, which syncs if the interval has passed by then (or re-arms).
        await self._sleep(max(0.0, self._next_sync - self._clock()))
        self._queue.put_nowait(_TICK)

    async def _sync(self, fds: list[int], names: str, rows: int) -> None:
        # One thread hop per batch keeps the event loop free during a slow fsync.
        def sync_all() -> None:
            with self._fd_lock:
                for fd in fds:
                    self._fsync_fn(fd)

        try:
            await asyncio.to_thread(sync_all)
        except OSError as exc:
            raise LedgerError(
                f"cannot sync ledger {names} to disk: {exc.strerror or exc}; {rows} row(s) not recorded"
            ) from exc

    def _fail_queued(self, err: BaseException) -> None:
        while True:
            try:
                _, _, fut = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            _settle(fut, err)


def _as_row_failure(exc: BaseException) -> BaseException:
    """What a pending row's future gets when the writer stops on ``exc``."""
    if isinstance(exc, (asyncio.CancelledError, LedgerError)):
        return exc
    return LedgerError(f"ledger writer stopped ({type(exc).__name__}: {exc}); row not recorded")


def _settle(fut: asyncio.Future[None] | None, exc: BaseException | None = None) -> None:
    if fut is None or fut.done():
        return
    if exc is None:
        fut.set_result(None)
    elif isinstance(exc, asyncio.CancelledError):
        fut.cancel()
    else:
        fut.set_exception(exc)
