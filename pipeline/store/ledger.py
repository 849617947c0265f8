"""Append-only JSONL ledgers under ``<out_dir>/state/``: the run's checkpoint.

Three pieces, each small:

``read_ledger`` / ``iter_ledger`` / ``iter_ledger_spans`` / ``iter_blocks``
    Load a ledger at start-up. A torn last line (SIGKILL or power loss in the
    middle of an append) is cut off the file with a warning; a bad line anywhere
    else is corruption and raises :class:`~pipeline.errors.InputError` naming
    the file and line, because dropping it would silently lose a paid answer.
    Read-only (``repair=False``, for ``status`` beside a live run) a torn last
    line is skipped instead of cut. ``iter_blocks`` gives whole-line blocks of
    raw bytes, for the scans of :mod:`pipeline.store.layout`, and their rows.
``RunLock``
    One run per output folder: ``fcntl.flock`` on ``state/run.lock``, held on an
    open descriptor for the whole run, so a crashed holder's lock dies with its
    process and there is never a stale lock to clean up.
``LedgerWriter``
    The single writer. ``record`` appends a row at once, in the caller's own
    step, so nothing (Ctrl-C included) can come between "answer received" and
    "answer on file", and a process crash loses nothing acknowledged; its task
    only fsyncs, and the policy says what a caller waits for (a sync under
    "line", nothing under "batch" and "never").

What a "torn tail" is, precisely: every byte after the last newline (the
writer always ends a row with one, so such bytes were never acknowledged),
plus the last newline-terminated line if it is not a JSON object and the line
before it is sound (a power loss can persist a line's length but not its
bytes). Two bad lines in a row at the end are corruption, not a tear; they are
left in place for ``read_ledger`` to report. This keeps ``repair_tail``
idempotent: it never eats more than one complete line, however often it runs.

The rows themselves are defined in :mod:`pipeline.store.schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import errno
import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias

import orjson

from pipeline.errors import InputError, LedgerError, LockedError, PipelineError
from pipeline.jsonl import dumps_line

try:  # POSIX only; kept importable elsewhere so the error can say why.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_FSYNC_INTERVAL_S",
    "FsyncPolicy",
    "LedgerWriter",
    "LineBlock",
    "RunLock",
    "append_row",
    "gc_paused",
    "headless_answer",
    "iter_blocks",
    "iter_ledger",
    "iter_ledger_spans",
    "parse_lock_info",
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
# The "batch" policy's least gap between syncs: how many seconds of rows a
# power cut can cost (a process crash costs none). A row counts as recorded
# once written, so nothing waits for it; a sync a second is noise on any disk.
DEFAULT_FSYNC_INTERVAL_S: Final = 1.0


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


def _line_number(path: Path, offset: int) -> int | str:
    """The number of the line starting at byte ``offset``: counted only for an
    error message, so the readers need not count lines as they go."""
    try:
        with open(path, "rb") as fh:
            newlines, pos = 0, 0
            while pos < offset:
                chunk = fh.read(min(_READ_BLOCK, offset - pos))
                if not chunk:
                    break
                newlines += chunk.count(b"\n")
                pos += len(chunk)
        return newlines + 1
    except OSError:
        return "?"


def _corrupt(path: Path, offset: int, why: str) -> InputError:
    return InputError(
        f"{path}: line {_line_number(path, offset)} (byte offset {offset}) {why}. The ledger is "
        "damaged in the middle, not just torn at the end, so nothing was dropped: fix or delete "
        "that line (or move the file aside to start that ledger over), then run again"
    )


def _parse_slow(path: Path, lines: list[bytes], offset: int) -> list[dict[str, Any]]:
    """Line-by-line parse of one block: skips blank lines, names the first bad one."""
    rows: list[dict[str, Any]] = []
    for line in lines:
        if line.strip():
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise _corrupt(path, offset, f"is not valid JSON ({exc})") from None
            if type(row) is not dict:
                raise _corrupt(path, offset, f"is a JSON {type(row).__name__}, not an object")
            rows.append(row)
        offset += len(line) + 1
    return rows


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off inside (and back as it was after), for start-up code
    that builds millions of acyclic objects.

    The switch is process-wide, so only a caller that owns the process at
    that moment may use it: the main thread, before any other work runs
    (``pipeline.qa.stage.load_state``). Nothing in this module pauses it on
    its own, so no reader run in a worker thread changes it under the loop."""
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


def headless_answer(path: str | os.PathLike[str], offset: int) -> InputError:
    """The error for an answer row at ``offset`` without a string ``conv`` and
    a ``turn`` >= 1 (``{}``, say): damage, named like any other bad line,
    since skipping it would drop an answer without a word."""
    return _corrupt(Path(path), offset, "is an answer row without a string 'conv' and an integer 'turn' >= 1")


def _line_blocks(
    path: Path, block_size: int, *, repair: bool = True, until: int | None = None
) -> Iterator[tuple[bytes, int, int]]:
    """``path`` read a block at a time, after cutting a torn tail: each item is
    ``(block, end, offset)`` where ``block[:end]`` holds whole lines only (at
    least one) and ``offset`` is its byte offset. A missing file yields nothing.
    With ``until`` (a line end), only the bytes before it are read.

    Each block is read at the offset where the previous one's whole lines
    ended, so the partial line at a block's end is read again rather than
    glued onto the next block by a copy. ``repair=False`` reads without
    writing (``status`` beside a live run): nothing is cut, and bytes after
    the last newline are an append in flight, skipped."""
    if repair:
        repair_tail(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size  # rows appended meanwhile are not read
        if until is not None:
            size = min(size, until)
        offset, want = 0, block_size
        while offset < size:
            block = os.pread(fd, min(want, size - offset), offset)
            if not block:  # the file shrank under us; the lock should prevent it
                break
            end = block.rfind(b"\n") + 1
            if end:
                yield block, end, offset
                offset, want = offset + end, block_size
            elif offset + len(block) < size:
                want *= 2  # a line longer than a block: read more of it at once
            else:
                if repair and block.strip():
                    # Unreachable after repair_tail unless someone appends concurrently.
                    raise _corrupt(path, offset, "has no final newline (is another process writing?)")
                break
    finally:
        os.close(fd)


class LineBlock:
    """Whole lines of a ledger read at once (:func:`iter_blocks`): the bytes
    ``data[:end]`` starting at byte ``offset`` of the file, for a reader that
    scans them raw (:mod:`pipeline.store.layout`), and their rows
    (:meth:`rows`, :meth:`spans`) for one that parses them, with the errors of
    :func:`iter_ledger`."""

    __slots__ = ("_path", "_tolerant", "_torn", "data", "end", "offset")

    def __init__(self, data: bytes, end: int, offset: int, path: Path, tolerant: bool,
                 torn: list[InputError]) -> None:
        self.data, self.end, self.offset = data, end, offset
        self._path, self._tolerant, self._torn = path, tolerant, torn

    def _lines(self) -> list[bytes]:
        return self.data[: self.end - 1].split(b"\n") if self.end else []

    def rows(self) -> list[dict[str, Any]]:
        """The rows of the block's lines, in order (blank lines skipped)."""
        lines = self._lines()
        try:  # every line parsed in one C-level loop; a bad one: the slow path names it
            rows = list(map(orjson.loads, lines))
            if all(type(r) is dict for r in rows):
                return rows
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            pass
        if not self._tolerant:
            return _parse_slow(self._path, lines, self.offset)
        rows = _parse_slow(self._path, lines[:-1], self.offset)
        last = self.offset + sum(len(line) + 1 for line in lines[:-1])
        try:
            rows += _parse_slow(self._path, lines[-1:], last)
        except InputError as exc:
            self._torn.append(exc)  # raised only if a line follows it
        return rows

    def spans(self) -> Iterator[tuple[dict[str, Any], int, int]]:
        """Each row with where it is: ``(row, byte offset, byte length
        without the newline)``, so a caller that keeps only a row's span can
        read it back later with one ``pread``.

        Rows are parsed one at a time, not a block at once: a caller building a
        long-lived index from them would otherwise interleave its entries with
        a block's worth of short-lived rows, and the memory those pin may stay
        with the process."""
        loads = orjson.loads
        lines = self._lines()
        last = len(lines) - 1
        offset = self.offset
        for i, line in enumerate(lines):
            try:
                row = loads(line)
            except ValueError:
                row = None
            if type(row) is dict:
                yield row, offset, len(line)
            elif line.strip():  # bad: raise the error that names it, unless it may be a torn tail
                try:
                    _parse_slow(self._path, [line], offset)
                except InputError as exc:
                    if not self._tolerant or i < last:
                        raise
                    self._torn.append(exc)
            offset += len(line) + 1


def iter_blocks(
    path: str | os.PathLike[str], *, block_size: int = _READ_BLOCK, repair: bool = True,
    until: int | None = None,
) -> Iterator[LineBlock]:
    """A ledger a read block of whole lines at a time (:class:`LineBlock`).

    The file rules of :func:`iter_ledger`: a torn tail is cut first (or with
    ``repair=False`` skipped, the file untouched); a bad line elsewhere raises
    :class:`~pipeline.errors.InputError` naming it, from the block's
    :meth:`~LineBlock.rows` or :meth:`~LineBlock.spans`, or when the next
    block is taken if the bad line ended a block read without repair.
    ``until``: read only the lines before that byte offset (the end of a line
    an earlier read saw), repairing nothing, of a ledger still appended to."""
    p = Path(path)
    # A ledger being appended to has a "torn" tail whenever a row is half written.
    repair = repair and until is None
    torn: list[InputError] = []
    for block, end, offset in _line_blocks(p, block_size, repair=repair, until=until):
        if torn:  # a bad line with a line after it is not a torn tail
            raise torn[0]
        yield LineBlock(block, end, offset, p, not repair, torn)


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
    for block in iter_blocks(path, block_size=block_size, repair=repair):
        yield from block.rows()


def iter_ledger_spans(
    path: str | os.PathLike[str], *, block_size: int = _READ_BLOCK, repair: bool = True
) -> Iterator[tuple[dict[str, Any], int, int]]:
    """:func:`iter_ledger` with where each row is (see :meth:`LineBlock.spans`)."""
    for block in iter_blocks(path, block_size=block_size, repair=repair):
        yield from block.spans()


def read_ledger(
    path: str | os.PathLike[str], *, block_size: int = _READ_BLOCK
) -> list[dict[str, Any]]:
    """All rows of a JSONL ledger; ``[]`` when the file is missing or empty.

    Same rules as :func:`iter_ledger`: a torn tail is cut off the file with a
    warning, a bad line elsewhere raises :class:`~pipeline.errors.InputError`."""
    out: list[dict[str, Any]] = []
    for block in iter_blocks(path, block_size=block_size):
        out.extend(block.rows())
    return out


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


def parse_lock_info(data: bytes) -> dict[str, Any]:
    """What a lock file says of its holder (``{"pid", "host", "started"}``),
    ``{}`` when it says nothing usable: a holder may be between truncate and
    write, and a released lock is empty."""
    try:
        info = orjson.loads(data) if data.strip() else {}
    except orjson.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return parse_lock_info(os.pread(fd, 4096, 0))
    except OSError:
        return {}


# --------------------------------------------------------------------------- writer


def append_row(path: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append one row to a ledger and sync it, outside a run (``build`` records
    its event so). Cuts a torn tail first, as :class:`LedgerWriter` does; the
    caller holds the :class:`RunLock`."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(p)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, dumps_line(row))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LedgerError(f"cannot append to ledger {p}: {exc.strerror or exc}; row not recorded") from exc


class _Written:
    """What :meth:`LedgerWriter.record` returns when the row needs no sync to
    count as recorded: awaiting it returns at once, without a loop round trip."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator; never reached


_WRITTEN: Final = _Written()


def _retrieve(fut: asyncio.Future[None]) -> None:
    # A caller cancelled while its row waited for a sync no longer awaits the
    # future; fetch any exception so asyncio does not log it as unretrieved.
    # The error itself still surfaces from LedgerWriter.run().
    if not fut.cancelled():
        fut.exception()


class LedgerWriter:
    """The single writer of the run's ledgers.

    ``paths`` maps ledger names (``"questions"``, ``"answers"``, ...) to files.
    :meth:`record` appends a row at once: one ``os.write`` of one line
    (:func:`pipeline.jsonl.dumps_line`) on an ``O_APPEND`` descriptor, in the
    caller's own step, so nothing can come between an answer received and its
    row on file, and a process crash (SIGKILL, OOM, Ctrl-C) loses nothing
    :meth:`record` accepted. What the returned awaitable waits for is the
    ``fsync`` policy, i.e. how much a power cut or OS crash can lose:

    ``"line"``   it resolves after a sync that began after the write: nothing
                 acknowledged is lost. Rows written while one sync runs share
                 the next (group commit), so syncs never queue up behind rows.
    ``"batch"``  it resolves at once; :meth:`run` syncs everything written
                 since the last sync, no sooner than ``fsync_interval_s`` after
                 it: a power cut loses at most that many seconds of rows, which
                 a resume asks again.
    ``"never"``  it resolves at once; the OS writes back when it likes.

    Why the caller writes and no writer task does: under load every row cost a
    queue hand-off, a future, a shield and a wake-up of the writer and then of
    the caller, more than appending a short line to the page cache takes. Why
    plain ``os.write`` and not aiofiles: aiofiles sends every call to a thread,
    for the same reason. Only ``fsync`` can block for long (milliseconds to
    seconds on slow disks), so it alone runs in a worker thread, in :meth:`run`.

    Start :meth:`run` as a task and stop it with :meth:`close`, after which it
    makes a last sync of what is unsynced and returns. A row that cannot be
    written raises :class:`LedgerError` from :meth:`record` and closes the
    writer (a full disk stays full); :meth:`run` raises it too, and fails every
    row still waiting for a sync. A row that is not JSON fails alone.

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
        self.fsync_interval_s = fsync_interval_s
        # Rows on file per ledger, and how many syncs covered them.
        self.rows_written: dict[str, int] = dict.fromkeys(self.paths, 0)
        self.syncs = 0
        self._fsync_fn = fsync_fn
        self._write_fn = write_fn
        self._clock = clock
        self._sleep = sleep
        # Written since the last sync began: which ledgers, and (policy
        # "line") the futures of the rows waiting for it.
        self._dirty: set[str] = set()
        self._waiting: list[asyncio.Future[None]] = []
        self._next_sync = float("-inf")
        self._wake = asyncio.Event()
        self._closed = False
        self._started = False
        self._error: LedgerError | None = None
        self._fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._fd_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the writer failed."""
        return self._closed

    def record(self, name: str, row: Mapping[str, Any]) -> Awaitable[None]:
        """Append ``row`` to ledger ``name`` now; the returned awaitable resolves
        when the row counts as recorded under the fsync policy (see the class).

        A plain function, so the row is on file before the caller can be
        cancelled; under ``"line"`` the awaitable is shielded, so cancelling
        the awaiting task (Ctrl-C) does not take the row out of the next sync.
        Raises :class:`LedgerError` when the row cannot be written (the writer
        is closed, the disk is full, the row is not JSON) and ``KeyError`` for
        a ledger it does not know."""
        return self.record_many(name, (row,))

    def record_many(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Awaitable[None]:
        """:meth:`record` for several rows at once, in one write: all of them are
        on file, or (bad JSON, full disk) none."""
        if self._closed:
            why = f" after an error: {self._error}" if self._error else ""
            raise LedgerError(f"ledger writer is closed{why}; row for {name!r} not recorded")
        fd = self._fds.get(name)
        if fd is None:
            if name not in self.paths:
                raise KeyError(f"unknown ledger {name!r}; known: {', '.join(sorted(self.paths))}")
            fd = self._guard(self._open, name)
        try:
            lines = [dumps_line(row) for row in rows]
        except TypeError as exc:  # orjson.JSONEncodeError
            raise LedgerError(f"row for ledger {name!r} cannot be written as JSON: {exc}") from exc
        if not lines:
            return _WRITTEN
        self._guard(self._write, name, fd, lines[0] if len(lines) == 1 else b"".join(lines), len(lines))
        self.rows_written[name] += len(lines)
        if self.fsync == "never":
            return _WRITTEN
        if not self._dirty:
            self._wake.set()
        self._dirty.add(name)
        if self.fsync == "batch":
            return _WRITTEN
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._waiting.append(fut)
        return asyncio.shield(fut)

    def close(self) -> None:
        """Take no more rows; :meth:`run` syncs what is unsynced and returns."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """Sync per the policy until :meth:`close`; raise :class:`LedgerError` when
        a row could not be written or a sync failed (after failing every row
        still waiting for a sync)."""
        if self._started:
            raise RuntimeError("LedgerWriter.run() can only run once")
        self._started = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._error is not None:
                    raise self._error
                if self.fsync == "batch" and not self._closed:
                    await self._wait_for_interval()
                if self._dirty and self.fsync != "never":
                    await self._sync_dirty()
                if self._closed and not self._dirty:
                    if self._error is not None:
                        raise self._error
                    return
        except BaseException as exc:
            self._closed = True
            failure = _as_row_failure(exc)
            waiting, self._waiting = self._waiting, []
            for fut in waiting:  # written but not synced: not durable
                _settle(fut, failure)
            raise
        finally:
            self._close_fds()

    async def _wait_for_interval(self) -> None:
        """Sleep until a sync may start again, or until :meth:`close`."""
        delay = self._next_sync - self._clock()
        if delay <= 0:
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        closing = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeper, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closing.cancel()
        self._wake.clear()  # rows written meanwhile are in this sync

    async def _sync_dirty(self) -> None:
        """One sync over every ledger written since the last began; then resolve
        the rows it covers. Rows written during it wait for the next."""
        names, self._dirty = self._dirty, set()
        waiting, self._waiting = self._waiting, []
        fds = [self._fds[n] for n in names]
        try:
            await self._sync(fds, ", ".join(sorted(names)), len(waiting))
        except BaseException:
            self._waiting = waiting + self._waiting  # run() fails them all
            raise
        self.syncs += 1
        # Measured from the end of the sync, so a slow disk is not asked again
        # at once: the interval bounds syncs per second however long each takes.
        self._next_sync = self._clock() + self.fsync_interval_s
        for fut in waiting:
            _settle(fut)
        if self._dirty:  # written during the sync: go round again
            self._wake.set()

    async def _sync(self, fds: list[int], names: str, rows: int) -> None:
        # One thread hop per sync keeps the event loop free during a slow fsync.
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

    def _guard(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run ``action``; a :class:`LedgerError` from it closes the writer and
        wakes :meth:`run` to raise it."""
        try:
            return action(*args)
        except LedgerError as exc:
            self._error = exc
            self._closed = True
            self._wake.set()
            raise

    def _open(self, name: str) -> int:
        path = self.paths[name]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A fragment left by an earlier crash would glue onto our first line.
            repair_tail(path)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc.strerror or exc}") from exc
        self._fds[name] = fd
        self._sizes[name] = os.fstat(fd).st_size
        return fd

    def _write(self, name: str, fd: int, data: bytes, rows: int) -> None:
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

    def _close_fds(self) -> None:
        # If run() was cancelled during a sync, the thread may still be inside
        # fsync on these descriptors; the lock makes us wait for it (one fsync
        # at most) rather than close a descriptor under it.
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _as_row_failure(exc: BaseException) -> BaseException:
    """What a row waiting for a sync gets when the writer stops on ``exc``."""
    if isinstance(exc, (asyncio.CancelledError, LedgerError)):
        return exc
    return LedgerError(f"ledger writer stopped ({type(exc).__name__}: {exc}); row not recorded")


def _settle(fut: asyncio.Future[None], exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    elif isinstance(exc, asyncio.CancelledError):
        fut.cancel()
    else:
        fut.set_exception(exc)
