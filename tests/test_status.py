"""``status`` and ``qa --dry-run`` on prepared ledgers: what they say, and that
they only read (no lock, no repair, no file created)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

import run
from pipeline.errors import InputError
from pipeline.store.ledger import RunLock
from pipeline.outputs.status import last_run_outcome, lock_holder, resume_command
from pipeline.store.view import iter_rows
from pipeline.settings import parse_settings

SKIP = "Topics unrelated to the knowledge base. Updating good_questions and bad_questions can improve accuracy."


def write_settings(tmp_path: Path, per_aspect: int = 2) -> Path:
    path = tmp_path / "wukong.toml"
    path.write_text(
        f'[paths]\nout_dir = "{tmp_path / "out"}"\n'
        f'[questions]\naspects = ["战斗", "剧情"]\nper_aspect = {per_aspect}\n'
        '[rag]\nbackend = "huixiangdou"\n',
        encoding="utf-8",
    )
    return path


def write_ledger(tmp_path: Path, name: str, rows: list[dict[str, Any]], tail: bytes = b"") -> Path:
    path = tmp_path / "out" / "state" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows) + tail)
    return path


QUESTIONS = [
    {"id": "q0", "aspect": "战斗", "text": "问题0？", "seq": 0},
    {"id": "q1", "aspect": "战斗", "text": "问题1？", "seq": 1},
    {"id": "q2", "aspect": "剧情", "text": "问题2？", "seq": 2},
]


def answer(conv: str, kind: str, state: str = "success", reason: str = "") -> dict[str, Any]:
    return {"conv": conv, "turn": 1, "question": conv, "kind": kind, "answer": "答" * 20 if kind == "answered"
            else "", "state": state, "reason": reason, "seconds": 1.0}


START = {"event": "run_start", "pid": 424242, "time": 1_700_000_000.0, "questions_before": 0}
USAGE = {"prompt_tokens": 1200, "completion_tokens": 300, "cost": 0.002}


def end(status: str, detail: str = "") -> dict[str, Any]:
    return {"event": "run_end", "status": status, "detail": detail, "seconds": 61.0,
            "stats": {"dropped": {"duplicate": 4}}, "usage": USAGE}


def status_text(tmp_path: Path, capsys: pytest.CaptureFixture[str], settings_file: Path) -> str:
    code = run.main(["--settings", str(settings_file), "status"])
    out = capsys.readouterr().out
    assert code == 0
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_status_of_a_complete_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_settings(tmp_path, per_aspect=2)
    questions = [*QUESTIONS, {"id": "q3", "aspect": "剧情", "text": "问题3？", "seq": 3}]
    write_ledger(tmp_path, "questions", questions)
    write_ledger(tmp_path, "answers", [answer("q0", "answered"), answer("q1", "skipped", SKIP),
                                       answer("q2", "answered"), answer("q3", "rejected", reason="refusal")])
    write_ledger(tmp_path, "events", [START, end("complete")])
    out = status_text(tmp_path, capsys, cfg)
    assert "last run: complete" in out and "took 61 s" in out
    assert "questions: 4/4" in out
    assert "  战斗  2/2" in out and "  剧情  2/2" in out
    assert "answers by kind: answered 2, skipped 1, rejected 1" in out
    assert f"       1  {SKIP}" in out
    assert "       3  success" in out, "the rejected answer was a success for HuixiangDou"
    assert "gate rejections: refusal 1" in out
    assert "questions dropped: duplicate 4" in out
    assert "tokens: 1200 prompt + 300 completion; cost 0.0020" in out
    assert "nothing left to do" in out


def test_status_of_a_quota_stop_says_how_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_settings(tmp_path)
    write_ledger(tmp_path, "questions", QUESTIONS)
    write_ledger(tmp_path, "answers", [answer("q0", "answered")])
    write_ledger(tmp_path, "events", [START, end("quota", "LLM API answered 402: Insufficient Balance")])
    out = status_text(tmp_path, capsys, cfg)
    assert "last run: quota" in out
    assert "  LLM API answered 402: Insufficient Balance" in out
    assert "questions: 3/4" in out and "  剧情  1/2" in out
    assert "conversations: 1 finished, 2 pending (2 turns left)" in out
    assert f"to resume: python run.py --settings {cfg} qa" in out


def test_status_of_a_crashed_run_and_it_never_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_settings(tmp_path)
    write_ledger(tmp_path, "questions", QUESTIONS)
    # A torn last line, as a SIGKILL mid-append leaves it: status must not cut it.
    write_ledger(tmp_path, "answers", [answer("q0", "answered")], tail=b'{"conv": "q1", "tu')
    write_ledger(tmp_path, "events", [START, {"event": "usage", "usage": USAGE}])
    # The dead run's lock file still names it; no process holds the lock.
    (tmp_path / "out" / "state" / "run.lock").write_bytes(orjson.dumps({"pid": dead_pid()}) + b"\n")
    before = snapshot(tmp_path / "out")

    out = status_text(tmp_path, capsys, cfg)

    assert "last run: crashed (started but never recorded its end" in out
    assert "tokens: 1200 prompt + 300 completion" in out, "usage snapshots of the crashed run count"
    assert "to resume: python run.py" in out
    assert snapshot(tmp_path / "out") == before, "status wrote nothing, cut nothing"


def test_status_while_a_run_holds_the_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_settings(tmp_path)
    write_ledger(tmp_path, "questions", QUESTIONS)
    write_ledger(tmp_path, "events", [{**START, "pid": os.getpid()}])
    with RunLock(tmp_path / "out"):
        out = status_text(tmp_path, capsys, cfg)
    assert f"last run: running (pid {os.getpid()} holds the lock)" in out
    assert "a run is in progress" in out


def test_status_of_an_empty_folder_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_settings(tmp_path)
    out = status_text(tmp_path, capsys, cfg)
    assert "last run: none recorded" in out and "to start: python run.py" in out
    assert not (tmp_path / "out").exists()


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


@pytest.mark.parametrize(
    ("last_run", "holder", "expected"),
    [
        (None, None, "never run"),
        ({"event": "run_start", "status": "running or crashed"}, None, "crashed"),
        ({"event": "run_start", "status": "running or crashed"}, {"pid": 1}, "running"),
        ({"event": "run_start", "status": "complete"}, None, "complete"),
        ({"event": "run_start", "status": "quota"}, None, "quota"),
        ({"event": "run_start", "status": "interrupted"}, None, "interrupted"),
        # A run_end is final even if some other process holds the lock now.
        ({"event": "run_start", "status": "servers_down"}, {"pid": 1}, "servers_down"),
    ],
)
def test_last_run_outcome(last_run: dict[str, Any] | None, holder: dict[str, Any] | None, expected: str) -> None:
    assert last_run_outcome(last_run, holder) == expected


def test_lock_holder_reads_without_locking(tmp_path: Path) -> None:
    assert lock_holder(tmp_path) is None, "no lock file"
    with RunLock(tmp_path):
        holder = lock_holder(tmp_path)
        assert holder is not None and holder["pid"] == os.getpid()
    assert lock_holder(tmp_path) is None, "a released lock names nobody"


@pytest.mark.parametrize(
    ("source", "expected"),
    [("<defaults>", "python run.py qa"), ("settings.toml", "python run.py qa"),
     ("conf/big.toml", "python run.py --settings conf/big.toml qa")],
)
def test_resume_command_keeps_the_settings_file(source: str, expected: str) -> None:
    s = parse_settings({}, source=source, environ={})
    assert resume_command(s) == expected


@pytest.mark.parametrize(
    ("content", "rows"),
    [
        (b"", 0),
        (b'{"a": 1}\n{"a": 2}\n', 2),
        (b'{"a": 1}\n{"a": 2', 1),  # append in flight
        (b'{"a": 1}\n{"a": 2\n', 1),  # torn last line
        (b'{"a": 1}\n\n{"a": 2}\n', 2),  # blank lines carry nothing
    ],
)
def test_reading_read_only_skips_only_a_torn_tail(tmp_path: Path, content: bytes, rows: int) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(content)
    assert len(list(iter_rows(path))) == rows
    assert path.read_bytes() == content


def test_reading_read_only_names_a_damaged_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(InputError, match=r"l\.jsonl: line 2"):
        list(iter_rows(path))


def test_dry_run_on_a_half_done_folder_plans_the_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_settings(tmp_path)
    write_ledger(tmp_path, "questions", QUESTIONS)
    write_ledger(tmp_path, "answers", [answer("q0", "answered")])
    write_ledger(tmp_path, "events", [START, end("quota")])
    before = snapshot(tmp_path / "out")
    code = run.main(["--settings", str(cfg), "qa", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "the whole job: 2 LLM requests, 4 RAG requests" in out
    assert "already done: 3 questions written, 1 conversations finished (0 given up), 2 pending" in out
    assert "questions to write: 1 (1 LLM calls of up to 10 questions)" in out
    assert "RAG requests: 3 (HuixiangDou)" in out
    assert "assumed: LLM call 10 s" in out
    assert snapshot(tmp_path / "out") == before, "no lock file, no repair, no log"


def test_dry_run_needs_no_key_and_calls_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_settings(tmp_path)
    code = run.main(["--settings", str(cfg), "qa", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "nothing recorded yet; the run would do:" in out
    assert "LLM requests: 2 (2 question batches, 0 follow-ups)" in out
    assert not (tmp_path / "out").exists()


def test_a_settings_path_with_spaces_is_quoted_in_every_printed_command() -> None:
    s = dataclasses.replace(parse_settings({}, environ={}), source="my conf/run 1.toml")
    assert resume_command(s) == "python run.py --settings 'my conf/run 1.toml' qa"
    assert s.command("build") == "python run.py --settings 'my conf/run 1.toml' build"


def test_an_empty_object_in_the_middle_of_the_answers_is_named_like_other_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.qa.stage import load_state

    cfg = write_settings(tmp_path)
    write_ledger(tmp_path, "questions", QUESTIONS)
    path = write_ledger(tmp_path, "answers", [answer("q0", "answered"), {}, answer("q1", "answered")])
    write_ledger(tmp_path, "events", [START, end("complete")])
    before = path.read_bytes()

    assert run.main(["--settings", str(cfg), "status"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: line 2 (byte offset" in err and "without a string 'conv'" in err
    with pytest.raises(InputError, match=r"answers\.jsonl: line 2 .*without a string 'conv'"):
        load_state(run.load_settings(cfg, environ={}), repair=True)
    assert path.read_bytes() == before, "the damaged row is left for the user to see"


def test_a_row_that_is_no_question_row_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_settings(tmp_path)
    write_ledger(tmp_path, "questions", [QUESTIONS[0], {}, QUESTIONS[1]])
    assert run.main(["--settings", str(cfg), "status"]) == 2
    assert "state/questions.jsonl: the row {} is not a question row" in capsys.readouterr().err


def test_status_during_a_run_shows_the_tokens_it_used_so_far(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_settings(tmp_path)
    write_ledger(tmp_path, "questions", QUESTIONS)
    earlier = [START, end("quota")]  # 1200 + 300 tokens
    live = {**START, "pid": os.getpid(), "time": 1_700_000_100.0}
    write_ledger(tmp_path, "events", [*earlier, live])
    with RunLock(tmp_path / "out"):
        out = status_text(tmp_path, capsys, cfg)
    assert "tokens so far (none recorded by the running run yet): 1200 prompt + 300 completion" in out

    usage = {"event": "usage", "time": 1_700_000_105.0,
             "usage": {"prompt_tokens": 80, "completion_tokens": 40, "cost": 0.0001}}
    write_ledger(tmp_path, "events", [*earlier, live, usage])
    with RunLock(tmp_path / "out"):
        out = status_text(tmp_path, capsys, cfg)
    as_of = datetime.datetime.fromtimestamp(1_700_000_105.0).astimezone().isoformat(timespec="seconds")
    assert f"tokens so far (the running run's as of {as_of}): 1280 prompt + 340 completion" in out
