"""Ledgers: torn-tail repair, corruption errors, the run lock, the single writer."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.errors import InputError, LedgerError, LockedError
from pipeline.store.ledger import (
    LedgerWriter,
    RunLock,
    iter_ledger,
    iter_ledger_spans,
    read_ledger,
    repair_tail,
)

REPO = Path(__file__).resolve().parents[1]

GOOD = b'{"id":"a","n":1}\n{"id":"b","n":2}\n'
GOOD_ROWS = [{"id": "a", "n": 1}, {"id": "b", "n": 2}]


def _write(tmp_path: Path, data: bytes, name: str = "answers.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- reading


def test_missing_file_reads_as_empty_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "state" / "none.jsonl"
    assert read_ledger(path) == []
    assert repair_tail(path) == 0
    assert not path.exists()


def test_empty_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_ledger(_write(tmp_path, b"")) == []


def test_rows_come_back_in_file_order_with_unicode_intact(tmp_path: Path) -> None:
    rows = [{"q": f"黑神话第{i}问？", "i": i} for i in range(50)]
    path = _write(tmp_path, b"".join(orjson.dumps(r) + b"\n" for r in rows))
    assert read_ledger(path) == rows


def test_blank_lines_carry_no_data_and_are_skipped(tmp_path: Path) -> None:
    path = _write(tmp_path, b'{"id":"a","n":1}\n\n  \n{"id":"b","n":2}\n')
    assert read_ledger(path) == GOOD_ROWS


@pytest.mark.parametrize("block_size", [1, 3, 7, 16, 1 << 20])
def test_rows_split_across_read_blocks_are_reassembled(tmp_path: Path, block_size: int) -> None:
    rows = [{"i": i, "pad": "x" * (i % 13)} for i in range(40)]
    path = _write(tmp_path, b"".join(orjson.dumps(r) + b"\n" for r in rows))
    assert list(iter_ledger(path, block_size=block_size)) == rows


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (b'{"id":"c","n"', "fragment without newline (SIGKILL mid-append)"),
        (b'{"id":"c","n":3}', "complete object but no newline: never acknowledged"),
        (b"\x00\x00\x00\x00", "zero-filled tail (power loss)"),
        (b'{"id":"c"\x00\x00\n', "unparsable newline-terminated last line"),
        (b'{"id":"c"\x00\x00\n{"id":"d', "bad last line plus a fragment after it"),
        (b"[1, 2]\n", "last line is JSON but not an object"),
    ],
)
def test_torn_tail_is_cut_off_the_file_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tail: bytes, why: str
) -> None:
    path = _write(tmp_path, GOOD + tail)
    with caplog.at_level(logging.WARNING, logger="pipeline.store.ledger"):
        rows = read_ledger(path)
    assert rows == GOOD_ROWS, why
    assert path.read_bytes() == GOOD, "the torn bytes must be cut off the file itself"
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(path) in record.getMessage()
    assert f"byte offset {len(GOOD)}" in record.getMessage()
    assert f"{len(tail)} bytes" in record.getMessage()


def test_a_file_holding_only_a_fragment_is_cut_to_empty(tmp_path: Path) -> None:
    path = _write(tmp_path, b'{"id":"a"')
    assert repair_tail(path) == 9
    assert path.read_bytes() == b""
    assert read_ledger(path) == []


def test_repair_tail_is_idempotent_and_quiet_on_a_sound_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, GOOD + b'{"id":"c"\x00\n')
    assert repair_tail(path) == len(b'{"id":"c"\x00\n')
    caplog.clear()
    assert repair_tail(path) == 0
    assert path.read_bytes() == GOOD
    assert caplog.records == []


@pytest.mark.parametrize(
    ("data", "lineno", "offset"),
    [
        (b'{"a":1}\nnot json\n{"a":3}\n', 2, 8),
        (b'{"a":1}\n{"a":2}\n{"a":\n{"a":4}\n', 3, 16),
        (b'"just a string"\n{"a":2}\n', 1, 0),
        # Two bad lines at the end are damage, not one interrupted append:
        # only one line may ever be cut, the other is reported.
        (b'{"a":1}\nbad one\nbad two\n', 2, 8),
    ],
)
def test_bad_line_in_the_middle_is_an_error_naming_file_and_line(
    tmp_path: Path, data: bytes, lineno: int, offset: int
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as info:
        read_ledger(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"line {lineno} " in msg
    assert f"byte offset {offset}" in msg
    assert path.read_bytes() == data, "a corrupt ledger must not be modified"


def test_middle_error_line_number_is_right_across_read_blocks(tmp_path: Path) -> None:
    lines = [orjson.dumps({"i": i}) for i in range(30)]
    lines[17] = b"{oops"
    data = b"\n".join(lines) + b"\n"
    path = _write(tmp_path, data)
    with pytest.raises(InputError, match=r"line 18 \(byte offset "):
        list(iter_ledger(path, block_size=5))


# --------------------------------------------------------------------------- run lock


def test_second_lock_in_the_same_process_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with RunLock(out) as held:
        assert held.held
        assert (out / "state" / "run.lock").exists()
        with pytest.raises(LockedError) as info:
            RunLock(out).acquire()
    assert info.value.pid == os.getpid()
    msg = str(info.value)
    assert f"pid {os.getpid()}" in msg
    assert "is in use by another run" in msg
    assert "wait for it or stop it" in msg
    assert msg.startswith(str(out) + os.sep)


def test_lock_is_free_again_after_release(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        pass
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.held
    lock.release()
    assert not lock.held
    lock.release()  # releasing twice is harmless


_HOLD_LOCK = """
import sys
from pipeline.store.ledger import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.mark.slow
def test_lock_held_by_another_process_is_refused_then_freed_by_its_death(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == b"locked\n", proc.stderr.read() if proc.stderr else b""
        with pytest.raises(LockedError) as info:
            RunLock(tmp_path).acquire()
        assert info.value.pid == proc.pid
        assert f"pid {proc.pid}" in str(info.value)
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs in the child
        proc.communicate()
    with RunLock(tmp_path) as lock:
        assert lock.held


# --------------------------------------------------------------------------- writer


class FsyncSpy:
    """An fsync seam that counts calls and can hold the writer inside a sync."""

    def __init__(self, *, hold: bool = False) -> None:
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, fd: int) -> None:
        self.calls.append(fd)
        self.entered.set()
        self.release.wait()


def _held_line_writer(path: Path, **kw: Any) -> tuple[FsyncSpy, LedgerWriter, asyncio.Task[None]]:
    """A "line" writer running, whose every fsync waits for ``spy.release``."""
    spy = FsyncSpy(hold=True)
    writer = LedgerWriter({"a": path}, "line", fsync_fn=spy, **kw)
    return spy, writer, asyncio.create_task(writer.run())


def _lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


async def test_rows_land_in_their_ledgers_in_order(tmp_path: Path) -> None:
    paths = {"q": tmp_path / "state" / "questions.jsonl", "a": tmp_path / "state" / "answers.jsonl"}
    writer = LedgerWriter(paths, "batch", fsync_fn=FsyncSpy())
    task = asyncio.create_task(writer.run())
    waits = []
    for i in range(20):
        waits.append(writer.record("q", {"i": i, "q": f"问题{i}"}))
        if i % 3 == 0:
            waits.append(writer.record("a", {"i": i}))
    await asyncio.gather(*waits)
    writer.close()
    await task
    assert _lines(paths["q"]) == [{"i": i, "q": f"问题{i}"} for i in range(20)]
    assert _lines(paths["a"]) == [{"i": i} for i in range(0, 20, 3)]
    assert writer.rows_written == {"q": 20, "a": 7}


async def test_appending_keeps_what_an_earlier_run_wrote(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    writer = LedgerWriter({"a": path}, "never")
    task = asyncio.create_task(writer.run())
    await writer.record("a", {"id": "c", "n": 3})
    writer.close()
    await task
    assert _lines(path) == [*GOOD_ROWS, {"id": "c", "n": 3}]


async def test_a_torn_tail_from_an_earlier_crash_is_cut_before_appending(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + b'{"id":"torn')
    writer = LedgerWriter({"a": path}, "never")
    task = asyncio.create_task(writer.run())
    await writer.record("a", {"id": "c", "n": 3})
    writer.close()
    await task
    assert _lines(path) == [*GOOD_ROWS, {"id": "c", "n": 3}]


async def _until(what: Any) -> None:
    """Let the loop (and the sync thread) run until ``what()`` holds."""
    for _ in range(5000):
        if what():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def test_line_policy_resolves_only_after_a_sync_that_began_after_the_write(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    spy = FsyncSpy(hold=True)
    writer = LedgerWriter({"a": path}, "line", fsync_fn=spy)
    done = writer.record("a", {"x": 1})
    # On file at once: a process crash from here on loses nothing.
    assert _lines(path) == [{"x": 1}]
    await asyncio.sleep(0)
    assert not asyncio.ensure_future(done).done(), "nothing is synced before run() starts"
    task = asyncio.create_task(writer.run())
    await asyncio.to_thread(spy.entered.wait)
    assert not asyncio.ensure_future(done).done(), "inside fsync: still not durable"
    spy.release.set()
    await done
    writer.close()
    await task


@pytest.mark.parametrize("policy", ["batch", "never"])
async def test_batch_and_never_count_a_row_recorded_once_it_is_on_file(tmp_path: Path, policy: str) -> None:
    path = tmp_path / "a.jsonl"
    spy = FsyncSpy(hold=True)
    writer = LedgerWriter({"a": path}, policy, fsync_fn=spy)  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    await writer.record("a", {"x": 1})  # no sync has finished, and none has to
    assert _lines(path) == [{"x": 1}]
    assert writer.syncs == 0
    spy.release.set()
    writer.close()
    await task
    assert writer.syncs == (1 if policy == "batch" else 0)


async def test_cancelling_the_caller_does_not_stop_its_row_being_written(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    spy = FsyncSpy(hold=True)
    writer = LedgerWriter({"a": path}, "line", fsync_fn=spy)
    reached = asyncio.Event()

    async def worker() -> None:
        # the answer has arrived; recording it must survive a Ctrl-C here
        pending = writer.record("a", {"answer": "天命人"})
        reached.set()
        await pending

    caller = asyncio.create_task(worker())
    await reached.wait()
    caller.cancel()  # before the writer has even started
    with pytest.raises(asyncio.CancelledError):
        await caller
    run = asyncio.create_task(writer.run())
    await asyncio.to_thread(spy.entered.wait)
    spy.release.set()
    writer.close()
    await run
    assert _lines(path) == [{"answer": "天命人"}]
    assert writer.rows_written == {"a": 1} and writer.syncs == 1


async def test_cancelling_the_caller_mid_sync_still_records_the_row(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    spy, writer, run = _held_line_writer(path)

    async def worker() -> None:
        await writer.record("a", {"answer": "金箍棒"})

    caller = asyncio.create_task(worker())
    await asyncio.to_thread(spy.entered.wait)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    spy.release.set()
    writer.close()
    await run
    assert _lines(path) == [{"answer": "金箍棒"}]
    assert writer.syncs == 1


@pytest.mark.parametrize(("policy", "syncs", "fsyncs"), [("line", 1, 2), ("batch", 1, 2), ("never", 0, 0)])
async def test_one_sync_covers_every_ledger_written_since_the_last(
    tmp_path: Path, policy: str, syncs: int, fsyncs: int
) -> None:
    paths = {"q": tmp_path / "q.jsonl", "a": tmp_path / "a.jsonl"}
    spy = FsyncSpy()
    writer = LedgerWriter(paths, policy, fsync_fn=spy)  # type: ignore[arg-type]
    waits = [writer.record("q", {"i": i}) for i in range(5)]
    waits += [writer.record("a", {"i": i}) for i in range(3)]
    writer.close()
    await writer.run()
    await asyncio.gather(*waits)
    assert writer.syncs == syncs
    assert len(spy.calls) == len(set(spy.calls)) == fsyncs, "each ledger's file synced once"
    assert len(_lines(paths["q"])) == 5
    assert len(_lines(paths["a"])) == 3


async def test_line_policy_is_a_group_commit_rows_written_during_a_sync_share_the_next(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.jsonl"
    spy, writer, run = _held_line_writer(path)
    first = writer.record("a", {"i": 0})
    await asyncio.to_thread(spy.entered.wait)
    later = [writer.record("a", {"i": i}) for i in range(1, 11)]
    spy.release.set()
    await first
    await asyncio.gather(*later)
    assert writer.syncs == 2, "ten rows written during one sync wait for one more, not ten"
    writer.close()
    await run
    assert len(_lines(path)) == 11


class FakeTime:
    """Clock and sleep seams: time moves only when the test says, and a sleep
    ends only when the test has moved the clock past its deadline."""

    def __init__(self) -> None:
        self.now = 1000.0  # tests move it by binary fractions, so sums are exact
        self.sleeps: list[float] = []
        self.asleep = asyncio.Event()
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((self.now + seconds, fut))
        self.asleep.set()
        await fut

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, fut in self._waiters:
            if deadline <= self.now and not fut.done():
                fut.set_result(None)


def _interval_writer(path: Path, spy: FsyncSpy, fake: FakeTime, **kw: Any) -> LedgerWriter:
    return LedgerWriter({"a": path}, "batch", fsync_interval_s=0.25, fsync_fn=spy,
                        clock=fake.clock, sleep=fake.sleep, **kw)


async def test_batch_syncs_at_once_then_no_sooner_than_the_interval_after(tmp_path: Path) -> None:
    path, spy, fake = tmp_path / "a.jsonl", FsyncSpy(), FakeTime()
    writer = _interval_writer(path, spy, fake)
    run = asyncio.create_task(writer.run())
    await writer.record("a", {"i": 0})
    await _until(lambda: writer.syncs == 1)  # nothing synced yet: synced at once
    assert fake.sleeps == []
    fake.advance(0.0625)
    for b in range(3):
        for i in range(2):
            await writer.record("a", {"b": b, "i": i})  # recorded at once, unsynced
    assert len(_lines(path)) == 7
    await fake.asleep.wait()
    assert fake.sleeps == [0.1875], "the sync waits out what is left of the interval"
    assert writer.syncs == 1
    fake.advance(0.1875)
    await _until(lambda: writer.syncs == 2)
    assert len(fake.sleeps) == 1, "one wait covers every row written in the interval"
    writer.close()
    await run
    assert writer.syncs == 2, "close has nothing left to sync"


async def test_a_row_after_the_interval_has_passed_is_synced_without_waiting(tmp_path: Path) -> None:
    path, spy, fake = tmp_path / "a.jsonl", FsyncSpy(), FakeTime()
    writer = _interval_writer(path, spy, fake)
    run = asyncio.create_task(writer.run())
    await writer.record("a", {"i": 0})
    await _until(lambda: writer.syncs == 1)
    fake.advance(0.25)
    await writer.record("a", {"i": 1})
    await _until(lambda: writer.syncs == 2)
    assert fake.sleeps == []
    writer.close()
    await run


async def test_close_syncs_rows_waiting_for_the_interval_at_once(tmp_path: Path) -> None:
    path, spy, fake = tmp_path / "a.jsonl", FsyncSpy(), FakeTime()
    writer = _interval_writer(path, spy, fake)
    run = asyncio.create_task(writer.run())
    await writer.record("a", {"i": 0})
    await _until(lambda: writer.syncs == 1)
    await writer.record("a", {"i": 1})
    await fake.asleep.wait()
    writer.close()
    await run  # the clock never moved: close does not wait out the interval
    assert writer.syncs == 2 and writer.rows_written == {"a": 2}


async def test_a_failed_write_fails_the_rows_still_waiting_for_a_sync_not_the_synced_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.jsonl"
    first = len(orjson.dumps({"i": 0})) + 1
    spy, writer, run = _held_line_writer(path, write_fn=_full_disk_after(2 * first))
    synced = writer.record("a", {"i": 0})
    await asyncio.to_thread(spy.entered.wait)
    waiting = writer.record("a", {"i": 1})  # on file, waiting for the next sync
    with pytest.raises(LedgerError, match="No space left on device"):
        writer.record("a", {"i": 2})  # the disk is full now: refused at once
    spy.release.set()
    await synced
    with pytest.raises(LedgerError, match="No space left on device"):
        await run
    with pytest.raises(LedgerError):
        await waiting
    assert writer.rows_written == {"a": 2}
    assert _lines(path) == [{"i": 0}, {"i": 1}]  # clean JSONL: the partial row was cut back


@pytest.mark.parametrize("interval", [-0.1, float("nan")])
def test_a_negative_fsync_interval_is_refused(tmp_path: Path, interval: float) -> None:
    with pytest.raises(ValueError, match="fsync_interval_s must be >= 0"):
        LedgerWriter({"a": tmp_path / "a.jsonl"}, "batch", fsync_interval_s=interval)


def _full_disk_after(good_bytes: int) -> Any:
    """A write seam: lets ``good_bytes`` through, then fails like a full disk."""
    budget = [good_bytes]

    def write(fd: int, data: memoryview | bytes) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(fd, bytes(data[: budget[0]]))
        budget[0] -= n
        return n

    return write


@pytest.mark.parametrize("good_bytes", [0, 5])
async def test_full_disk_is_a_clear_error_and_nothing_unwritten_is_reported_recorded(
    tmp_path: Path, good_bytes: int
) -> None:
    path = _write(tmp_path, GOOD)
    writer = LedgerWriter({"a": path}, "batch", write_fn=_full_disk_after(good_bytes))
    with pytest.raises(LedgerError) as info:
        writer.record("a", {"id": "c"})
    assert str(path) in str(info.value)
    assert "No space left on device" in str(info.value)
    # The partial line is cut back: the file is as it was, still clean JSONL.
    assert path.read_bytes() == GOOD
    assert writer.rows_written == {"a": 0}
    with pytest.raises(LedgerError, match="closed after an error"):
        writer.record("a", {"id": "d"})
    with pytest.raises(LedgerError, match="No space left on device"):
        await writer.run()  # the run that owns the writer hears of it too


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux /dev/full")
async def test_a_real_enospc_from_dev_full_surfaces_naming_the_file() -> None:
    writer = LedgerWriter({"a": "/dev/full"}, "never")
    with pytest.raises(LedgerError, match=r"/dev/full: No space left on device; 1 row\(s\) not recorded"):
        writer.record("a", {"id": "x"})
    with pytest.raises(LedgerError):
        await writer.run()


@pytest.mark.parametrize("policy", ["line", "batch"])
async def test_failed_sync_is_an_error_and_no_waiting_row_is_reported_recorded(
    tmp_path: Path, policy: str
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    path = tmp_path / "a.jsonl"
    writer = LedgerWriter({"a": path}, policy, fsync_fn=broken_fsync)  # type: ignore[arg-type]
    pending = writer.record("a", {"id": "x"})
    with pytest.raises(LedgerError, match="cannot sync ledger a to disk: Input/output error"):
        await writer.run()
    if policy == "line":
        with pytest.raises(LedgerError):
            await pending
    assert writer.closed


async def test_unopenable_ledger_is_an_error_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the folder should be")
    path = blocker / "a.jsonl"
    writer = LedgerWriter({"a": path}, "never")
    with pytest.raises(LedgerError, match=f"cannot open ledger {path}"):
        writer.record("a", {"id": "x"})
    with pytest.raises(LedgerError, match=f"cannot open ledger {path}"):
        await writer.run()


async def test_a_row_that_is_not_json_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    writer = LedgerWriter({"a": path}, "never")
    with pytest.raises(LedgerError, match="cannot be written as JSON"):
        writer.record("a", {"when": object()})
    await writer.record("a", {"id": "ok"})
    writer.close()
    await writer.run()
    assert _lines(path) == [{"id": "ok"}]


async def test_rows_after_close_and_unknown_ledgers_are_refused_at_once(tmp_path: Path) -> None:
    writer = LedgerWriter({"a": tmp_path / "a.jsonl"}, "never")
    with pytest.raises(KeyError, match="unknown ledger 'b'"):
        writer.record("b", {})
    writer.close()
    with pytest.raises(LedgerError, match="closed; row for 'a' not recorded"):
        writer.record("a", {})
    await writer.run()
    assert not (tmp_path / "a.jsonl").exists()


async def test_cancelling_the_writer_cancels_rows_it_did_not_sync(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    spy, writer, run = _held_line_writer(path)
    in_sync = writer.record("a", {"i": 0})
    await asyncio.to_thread(spy.entered.wait)
    waiting = writer.record("a", {"i": 1})
    run.cancel()
    spy.release.set()  # the writer waits for a running fsync before closing files
    with pytest.raises(asyncio.CancelledError):
        await run
    for pending in (in_sync, waiting):
        with pytest.raises(asyncio.CancelledError):
            await pending
    assert writer.closed
    assert len(_lines(path)) == 2, "both rows are on file all the same"


def test_unknown_fsync_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync must be one of line, batch, never"):
        LedgerWriter({"a": tmp_path / "a.jsonl"}, "sometimes")  # type: ignore[arg-type]


async def test_record_many_writes_all_rows_in_one_write_or_none(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    writes: list[int] = []

    def counting_write(fd: int, data: memoryview) -> int:
        writes.append(len(data))
        return os.write(fd, data)

    writer = LedgerWriter({"a": path}, "never", write_fn=counting_write)
    await writer.record_many("a", [{"i": i, "q": f"问题{i}"} for i in range(10)])
    assert len(writes) == 1, "one batch of questions is one write"
    with pytest.raises(LedgerError, match="cannot be written as JSON"):
        writer.record_many("a", [{"i": 10}, {"bad": object()}])
    await writer.record_many("a", [])
    writer.close()
    await writer.run()
    assert _lines(path) == [{"i": i, "q": f"问题{i}"} for i in range(10)], "none of a failed batch"
    assert len(writes) == 1 and writer.rows_written == {"a": 10}


@pytest.mark.parametrize("block_size", [7, 64, 1 << 20])
def test_spans_read_back_their_rows_and_read_only_skips_a_torn_tail(tmp_path: Path, block_size: int) -> None:
    path = tmp_path / "a.jsonl"
    content = b'{"a": 1}\n\n{"b": "\xe4\xb8\xad"}\n  \n{"c": [3]}\n{"torn": \n{"d'
    path.write_bytes(content)
    spans = list(iter_ledger_spans(path, block_size=block_size, repair=False))
    assert [row for row, _, _ in spans] == [{"a": 1}, {"b": "中"}, {"c": [3]}]
    assert [orjson.loads(content[o:o + n]) for _, o, n in spans] == [row for row, _, _ in spans]
    assert path.read_bytes() == content, "read-only: nothing cut"
    assert list(iter_ledger_spans(path, block_size=block_size)) == spans, "repairing: the tail is cut"
    assert path.read_bytes() == content[: content.index(b'{"torn"')]


def test_spans_name_a_bad_line_that_is_not_the_last(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n[2]\n{"b": 2}\n')
    for repair in (False, True):
        with pytest.raises(InputError, match=r"a\.jsonl: line 2 \(byte offset 9\)"):
            list(iter_ledger_spans(path, block_size=4, repair=repair))
