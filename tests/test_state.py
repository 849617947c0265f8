"""The resume plan derived from ledger rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.qa import load_state
from pipeline.settings import parse_settings
from pipeline.state import derive_state, ledger_paths, target_turns


def q(id_: str, aspect: str, seq: int) -> dict[str, Any]:
    return {"id": id_, "aspect": aspect, "text": f"{id_}是什么？", "seq": seq}


def a(conv: str, turn: int, kind: str, question: str = "", answer: str = "") -> dict[str, Any]:
    return {"conv": conv, "turn": turn, "question": question or f"{conv}-{turn}?", "kind": kind,
            "answer": answer or (f"answer {conv}-{turn}" if kind == "answered" else ""), "state": ""}


def derive(questions: list[dict[str, Any]], answers: list[dict[str, Any]], events: list[dict[str, Any]] = (),  # type: ignore[assignment]
           *, min_turns: int = 1, max_turns: int = 1, attempts: int = 3):  # type: ignore[no-untyped-def]
    return derive_state(questions, answers, list(events), aspects=["A", "B"], min_turns=min_turns,
                        max_turns=max_turns, max_answer_attempts=attempts)


def test_unanswered_questions_are_pending_in_seq_order() -> None:
    s = derive([q("x", "A", 1), q("y", "B", 0), q("z", "A", 2)], [a("x", 1, "answered")])
    assert [p.conv for p in s.pending] == ["y", "z"]
    assert s.accepted == {"A": ["x是什么？", "z是什么？"], "B": ["y是什么？"]}
    assert s.finished == 1 and s.next_seq == 3
    assert s.pending[0].next_question == "y是什么？" and s.pending[0].next_turn == 1


@pytest.mark.parametrize("kind", ["skipped", "vetoed", "rejected"])
def test_verdicts_end_a_conversation_and_are_not_asked_again(kind: str) -> None:
    s = derive([q("x", "A", 0)], [a("x", 1, kind)])
    assert s.pending == [] and s.finished == 1


def test_failed_turn_is_retried_until_the_attempt_limit() -> None:
    s = derive([q("x", "A", 0)], [a("x", 1, "failed"), a("x", 1, "failed")], attempts=3)
    assert [p.conv for p in s.pending] == ["x"] and s.pending[0].failed_attempts == 2
    s = derive([q("x", "A", 0)], [a("x", 1, "failed")] * 3, attempts=3)
    assert s.pending == [] and s.gave_up == 1


def test_latest_row_of_a_turn_wins() -> None:
    s = derive([q("x", "A", 0)], [a("x", 1, "failed"), a("x", 1, "answered")])
    assert s.pending == [] and s.finished == 1


def test_multi_turn_resumes_at_the_next_turn_with_history_and_paid_followup() -> None:
    conv = next(c for c in (f"c{i}" for i in range(100)) if target_turns(c, 2, 4) == 3)
    questions = [q(conv, "A", 0), {"id": "f2", "conv": conv, "turn": 2, "text": "追问二？"},
                 {"id": "f3", "conv": conv, "turn": 3, "text": "追问三？"}]
    answers = [a(conv, 1, "answered", "Q1", "A1"), a(conv, 2, "answered", "追问二？", "A2")]
    s = derive(questions, answers, min_turns=2, max_turns=4)
    (plan,) = s.pending
    assert plan.target == 3 and plan.next_turn == 3
    assert plan.history == [("Q1", "A1"), ("追问二？", "A2")]
    assert plan.next_question == "追问三？"  # written before the crash: not paid for again


def test_followup_not_yet_written_leaves_next_question_empty() -> None:
    conv = next(c for c in (f"c{i}" for i in range(100)) if target_turns(c, 2, 2) == 2)
    s = derive([q(conv, "A", 0)], [a(conv, 1, "answered")], min_turns=2, max_turns=2)
    assert s.pending[0].next_turn == 2 and s.pending[0].next_question is None


def test_complete_multi_turn_conversation_is_finished() -> None:
    s = derive([q("x", "A", 0)], [a("x", 1, "answered"), a("x", 2, "answered")], min_turns=2, max_turns=2)
    assert s.pending == [] and s.finished == 1


@pytest.mark.parametrize("conv", ["a", "b", "c", "dddd", "问题"])
def test_target_turns_is_stable_and_in_range(conv: str) -> None:
    t = target_turns(conv, 2, 4)
    assert 2 <= t <= 4 and t == target_turns(conv, 2, 4)


def test_target_turns_uses_the_whole_range() -> None:
    assert {target_turns(f"q{i}", 2, 4) for i in range(200)} == {2, 3, 4}


def test_events_give_last_run_exhausted_aspects_and_summed_usage() -> None:
    events = [
        {"event": "run_start", "pid": 1},
        {"event": "usage", "usage": {"prompt_tokens": 10}},
        {"event": "aspect_exhausted", "aspect": "B"},
        {"event": "run_end", "status": "quota", "time": 9.0, "usage": {"prompt_tokens": 30}},
        {"event": "run_start", "pid": 2},
        {"event": "usage", "usage": {"prompt_tokens": 5}},
    ]
    s = derive([], [], events)
    assert s.exhausted == {"B"}
    assert s.last_run is not None and s.last_run["pid"] == 2
    assert s.last_run["status"] == "running or crashed"
    assert s.usage == {"prompt_tokens": 35.0}


def test_a_finished_run_keeps_its_start_time_and_records_its_end() -> None:
    events = [{"event": "run_start", "time": 100.0}, {"event": "run_end", "status": "complete", "time": 160.0}]
    s = derive([], [], events)
    assert s.last_run is not None
    assert (s.last_run["time"], s.last_run["ended"], s.last_run["status"]) == (100.0, 160.0, "complete")


# ---- load_state: the same plan streamed from the files as derived from rows in memory


def _conv_with_target(n: int, lo: int, hi: int) -> str:
    return next(c for c in (f"{i:016x}" for i in range(1000)) if target_turns(c, lo, hi) == n)


def _load_cases() -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], int, int]]:
    c3 = _conv_with_target(3, 2, 4)
    c2 = _conv_with_target(2, 2, 4)
    return {
        "single turn: answered, failed, verdicts, unasked, non-hex ids": (
            [q("0000000000000001", "A", 3), q("0000000000000002", "B", 1), q("天", "A", 0), q("x", "B", 2),
             q("0000000000000003", "A", 4)],
            [a("0000000000000001", 1, "failed"), a("天", 1, "answered"), a("0000000000000001", 1, "failed"),
             a("x", 1, "vetoed"), a("0000000000000003", 1, "failed", question="")] + [a("0000000000000002", 1, "failed")] * 3,
            1, 1,
        ),
        "multi turn: history read back, follow-up written after, retried follow-up": (
            [q(c3, "A", 0), q(c2, "B", 1),
             {"id": "f2", "conv": c3, "turn": 2, "text": "追问二？"},
             {"id": "f3", "conv": c3, "turn": 3, "text": "追问三？"},
             {"id": "g2", "conv": c2, "turn": 2, "text": "再问？"}],
            [a(c3, 1, "answered", "Q1", "A1"), a(c3, 2, "answered", "追问二？", "A2"),
             a(c2, 1, "answered", "问\"一\"\\n", "答一"), a(c2, 2, "failed", "再问？")],
            2, 4,
        ),
    }


@pytest.mark.parametrize("case", sorted(_load_cases()))
def test_load_state_from_the_files_equals_derive_state_of_the_rows(tmp_path: Path, case: str) -> None:
    questions, answers, lo, hi = _load_cases()[case]
    events = [{"event": "run_start", "time": 1.0}, {"event": "aspect_exhausted", "aspect": "B"}]
    settings = parse_settings({"paths": {"data_dir": str(tmp_path), "out_dir": str(tmp_path / "out")},
                               "questions": {"aspects": ["A", "B"]},
                               "conversations": {"min_turns": lo, "max_turns": hi},
                               "run": {"max_answer_attempts": 3}}, environ={})
    settings.state_dir.mkdir(parents=True)
    for name, rows in ledger_paths(settings.state_dir).items():
        data = {"questions": questions, "answers": answers, "events": events}[name]
        rows.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in data))
    loaded = load_state(settings, repair=True)
    expected = derive(questions, answers, events, min_turns=lo, max_turns=hi, attempts=3)
    assert loaded == expected
    assert loaded.pending, "the case has conversations to resume"
