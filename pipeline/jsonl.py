"""JSONL primitives shared by every stage: one compact UTF-8 object per line,
and whole-file writes that land atomically (temp file, fsync, rename), whose
temporary files a killed process leaves behind are swept by the next write."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

try:  # POSIX; elsewhere a temporary file is swept by age alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# A temporary file younger than this is never swept: the moment between its
# creation and its writer's lock is not a dead writer.
STALE_AFTER_S = 60.0

__all__ = ["atomic_writer", "dumps_line", "remove_stale_temps", "write_jsonl_atomic"]


def dumps_line(obj: Any) -> bytes:
    """One JSONL line: compact, UTF-8 (not ASCII-escaped), newline-terminated."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on clean exit fsync it and rename
    it over ``path``. On error the temporary file is removed and ``path`` keeps
    its previous content, so a crash never leaves a half-written file.

    The temporary file (``.NAME.*.tmp``) is locked while written; one a killed
    process left (no lock) is removed by the next write of the same file
    (:func:`remove_stale_temps`), so it never outlives the next run."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temps(target.parent, [target.name]):
        log.info("removed %s, left by a write of %s that was killed", stale, target.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file is closed, or its writer dies
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file owner-only; a dataset is for trainers run by others too.
        os.chmod(tmp, 0o666 & ~_umask(target.parent))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def remove_stale_temps(folder: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Remove the temporary files :func:`atomic_writer` left beside ``folder/NAME``
    for each of ``names`` (``.NAME.*.tmp``: a process killed mid-write leaves
    one, as big as the file it was writing); return what was removed.

    A live writer holds a lock on its temporary file, so only files nobody
    locks, and older than :data:`STALE_AFTER_S`, are removed: safe beside
    another process writing the same file."""
    removed: list[Path] = []
    now = time.time()
    for name in names:
        for found in glob.glob(os.path.join(glob.escape(os.fspath(folder)), f".{glob.escape(name)}.*.tmp")):
            try:
                fd = os.open(found, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if now - os.fstat(fd).st_mtime < STALE_AFTER_S:
                    continue
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # its writer is alive
                os.unlink(found)
                removed.append(Path(found))
            except FileNotFoundError:
                continue
            finally:
                os.close(fd)
    return removed


_PROC_STATUS = "/proc/self/status"  # Linux: holds the umask as "Umask:\t0022"


def _umask(folder: Path) -> int:
    """The process's umask, read without changing it: ``os.umask`` can only
    read it by setting it, process-wide, under every other thread."""
    try:
        with open(_PROC_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # No /proc (macOS, BSD, old kernels): measure it on a file created the
    # way open() creates one, in the folder the file goes to.
    probe = folder / f".umask.{os.getpid()}.{os.urandom(6).hex()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        return 0o666 & ~os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        os.unlink(probe)


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not every platform can open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_jsonl_atomic(path: str | os.PathLike[str], records: Iterable[Any]) -> int:
    """Write ``records`` as JSONL to ``path`` atomically; return how many."""
    count = 0
    with atomic_writer(path) as fh:
        for rec in records:
            fh.write(dumps_line(rec))
            count += 1
    return count
