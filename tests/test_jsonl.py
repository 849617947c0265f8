"""Whole-file JSONL writes: atomic, compact UTF-8, normal permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.jsonl import atomic_writer, dumps_line, write_jsonl_atomic


def test_lines_are_compact_utf8_and_newline_terminated() -> None:
    assert dumps_line({"a": "悟空", "b": [1]}) == '{"a":"悟空","b":[1]}\n'.encode()


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_jsonl_atomic(path, [{"n": 1}, {"n": 2}])
    assert write_jsonl_atomic(path, [{"n": 3}]) == 1
    assert path.read_bytes() == b'{"n":3}\n'
    assert os.listdir(tmp_path) == ["x.jsonl"]


def test_failure_mid_write_keeps_previous_content(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_jsonl_atomic(path, [{"n": 1}])

    def records():  # type: ignore[no-untyped-def]
        yield {"n": 2}
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, records())
    assert path.read_bytes() == b'{"n":1}\n'
    assert os.listdir(tmp_path) == ["x.jsonl"]


def test_written_file_follows_the_umask_not_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_writer(tmp_path / "d.jsonl") as fh:
            fh.write(b"{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d.jsonl").stat().st_mode) == 0o644


def test_a_temporary_file_a_killed_writer_left_is_swept_by_the_next_write(tmp_path: Path) -> None:
    import fcntl
    import time

    from pipeline.jsonl import STALE_AFTER_S

    path = tmp_path / "x.jsonl"
    old = time.time() - STALE_AFTER_S - 5
    dead = tmp_path / ".x.jsonl.dead1234.tmp"  # what SIGKILL mid-write leaves: nobody holds it
    live = tmp_path / ".x.jsonl.live1234.tmp"  # a writer still at work holds its lock
    young = tmp_path / ".x.jsonl.young123.tmp"  # just made: its writer may not have locked it yet
    other = tmp_path / ".y.jsonl.dead5678.tmp"  # another file's: not this write's business
    for p in (dead, live, young, other):
        p.write_bytes(b"half")
    for p in (dead, live, other):
        os.utime(p, (old, old))
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        write_jsonl_atomic(path, [{"n": 1}])
    finally:
        os.close(holder)
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (path, live, young, other))


@pytest.mark.parametrize("proc_status", ["/proc/self/status", "/nonexistent/status"])
def test_the_umask_is_read_without_changing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc_status: str
) -> None:
    # From /proc where there is one, else measured on a probe file that is then removed.
    import pipeline.jsonl as jsonl

    monkeypatch.setattr(jsonl, "_PROC_STATUS", proc_status)
    calls: list[int] = []
    real_umask = os.umask
    old = real_umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
        with atomic_writer(tmp_path / "d.jsonl") as fh:
            fh.write(b"{}\n")
    finally:
        real_umask(old)
    assert stat.S_IMODE((tmp_path / "d.jsonl").stat().st_mode) == 0o640
    assert calls == [], "the process-wide umask is never set to read it"
    assert os.listdir(tmp_path) == ["d.jsonl"]
