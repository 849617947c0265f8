"""XTuner records, and building the dataset from ledger rows (the answer gate: test_gate.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.outputs.answer_stats import answer_stats
from pipeline.outputs.dataset import conversation_record, conversations_with_sources, write_dataset
from pipeline.store.answers import AnswerIndex

# --------------------------------------------------------------------------- records


def test_record_puts_the_system_prompt_on_the_first_turn_only() -> None:
    rec = conversation_record("你是助手。", [("问1？", "答1"), ("问2？", "答2"), ("问3？", "答3")])
    assert rec == {
        "conversation": [
            {"system": "你是助手。", "input": "问1？", "output": "答1"},
            {"input": "问2？", "output": "答2"},
            {"input": "问3？", "output": "答3"},
        ]
    }


def test_record_without_a_system_prompt_has_no_system_key() -> None:
    assert conversation_record("", [("问？", "答")]) == {"conversation": [{"input": "问？", "output": "答"}]}


# --------------------------------------------------------------------------- building


def q(qid: str, seq: int) -> dict[str, Any]:
    return {"id": qid, "aspect": "主要角色", "text": f"{qid}？", "seq": seq}


def a(conv: str, turn: int, kind: str = "answered", answer: str | None = None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "conv": conv, "turn": turn, "question": f"{conv}-q{turn}？", "kind": kind,
        "answer": (f"{conv}-a{turn}" if kind == "answered" else "") if answer is None else answer,
        "raw_answer": "", "refs": [], "state": "success" if kind == "answered" else "Irrelevant answer.",
        "reason": "", "server": "http://127.0.0.1:1", "attempts": 1, "seconds": 0.1,
    }
    row.update(extra)
    return row


def build_conversations(questions: list[dict[str, Any]], answers: list[dict[str, Any]], system_prompt: str,
                        min_turns: int, max_turns: int | None = None) -> list[dict[str, Any]]:
    """The dataset of these ledger rows, built as the run's end builds it."""
    index = AnswerIndex.of_rows(answers)
    pairs = conversations_with_sources(questions, index.answered_row, system_prompt, min_turns, max_turns)
    return [record for record, _ in pairs]


def turns_of(records: list[dict[str, Any]]) -> list[list[tuple[str, str]]]:
    return [[(t["input"], t["output"]) for t in r["conversation"]] for r in records]


def test_build_follows_question_ledger_order_not_answer_order() -> None:
    questions = [q("c", 3), q("a", 1), q("b", 2)]
    answers = [a("c", 1), a("b", 1), a("a", 1)]
    recs = list(build_conversations(questions, answers, "S", min_turns=1))
    assert turns_of(recs) == [[("a-q1？", "a-a1")], [("b-q1？", "b-a1")], [("c-q1？", "c-a1")]]
    assert all(r["conversation"][0]["system"] == "S" for r in recs)


def test_build_is_deterministic_for_the_same_ledgers() -> None:
    questions = [q(f"q{i}", i) for i in range(20)]
    answers = [a(f"q{i}", 1) for i in reversed(range(20))]
    first = list(build_conversations(questions, answers, "S", 1))
    assert first == list(build_conversations(questions, answers, "S", 1))


def test_the_latest_row_of_a_turn_wins() -> None:
    questions = [q("a", 1), q("b", 2), q("c", 3)]
    answers = [
        a("a", 1, "failed"), a("a", 1, answer="retried answer"),     # failure then success
        a("b", 1), a("b", 1, "rejected", reason="refusal"),         # success then later rejected
        a("c", 1, "failed"), a("c", 1, "failed"),
    ]
    recs = list(build_conversations(questions, answers, "", 1))
    assert turns_of(recs) == [[("a-q1？", "retried answer")]]


def test_a_turn_that_is_not_answered_ends_the_conversation() -> None:
    questions = [q("a", 1), q("b", 2)]
    answers = [
        a("a", 1), a("a", 2, "vetoed"), a("a", 3),   # turn 3 exists but follows a vetoed turn
        a("b", 1), a("b", 3),                        # turn 2 missing (interrupted)
    ]
    recs = list(build_conversations(questions, answers, "", 1))
    assert turns_of(recs) == [[("a-q1？", "a-a1")], [("b-q1？", "b-a1")]]


@pytest.mark.parametrize("kind", ["skipped", "vetoed", "failed", "rejected"])
def test_unanswered_first_turns_never_reach_the_dataset(kind: str) -> None:
    recs = list(build_conversations([q("a", 1)], [a("a", 1, kind, answer="some text")], "", 1))
    assert recs == []


def test_min_turns_drops_short_conversations_and_max_turns_caps_long_ones() -> None:
    questions = [q("one", 1), q("two", 2), q("three", 3)]
    answers = [a("one", 1), a("two", 1), a("two", 2), a("three", 1), a("three", 2), a("three", 3)]
    recs = list(build_conversations(questions, answers, "S", min_turns=2))
    assert [len(r["conversation"]) for r in recs] == [2, 3]
    recs = list(build_conversations(questions, answers, "S", min_turns=2, max_turns=2))
    assert [len(r["conversation"]) for r in recs] == [2, 2]
    assert "system" in recs[0]["conversation"][0] and "system" not in recs[0]["conversation"][1]


def test_questions_without_answers_and_malformed_rows_are_skipped() -> None:
    questions = [q("a", 1), q("a", 1), q("b", 2), {"seq": 3}]
    answers = [a("a", 1), {"turn": 1, "kind": "answered"}, {"conv": "b", "turn": "1"}]
    recs = list(build_conversations(questions, answers, "", 1))
    assert turns_of(recs) == [[("a-q1？", "a-a1")]]


HEX_A, HEX_B, HEX_C = "00000000000000ff", "0123456789abcdef", "fedcba9876543210"


@pytest.mark.parametrize(
    ("questions", "expected"),
    [
        # 16-hex ids (held as ints) come back exactly, leading zeros included.
        ([q(HEX_B, 2), q(HEX_A, 1), q(HEX_C, 3)], [HEX_A, HEX_B, HEX_C]),
        # Mixed with other ids; a repeated hex id keeps its first row.
        ([q(HEX_C, 3), q("x", 1), q(HEX_C, 0), q(HEX_A, 2)], ["x", HEX_A, HEX_C]),
        # Equal seqs keep file order; a row without seq sorts by its position.
        ([q(HEX_C, 5), q(HEX_A, 5), {"id": "y", "text": "y？"}, q(HEX_B, 0)], [HEX_B, "y", HEX_C, HEX_A]),
        # Uppercase hex is another id, not the same one as its lowercase twin.
        ([q(HEX_B.upper(), 1), q(HEX_B, 2)], [HEX_B.upper(), HEX_B]),
    ],
)
def test_build_orders_by_seq_and_keeps_every_kind_of_id(
    questions: list[dict[str, Any]], expected: list[str]
) -> None:
    answers = [a(str(row["id"]), 1) for row in questions]
    recs = list(build_conversations(questions, answers, "", 1))
    assert [r["conversation"][0]["input"] for r in recs] == [f"{qid}-q1？" for qid in expected]


def test_write_dataset_writes_utf8_jsonl_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "out" / "conversations.jsonl"
    records = list(build_conversations([q("天", 1)], [a("天", 1, answer="悟空")], "系统", 1))
    assert write_dataset(path, records) == 1
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and "悟空".encode() in raw
    assert [json.loads(line) for line in raw.splitlines()] == records


# --------------------------------------------------------------------------- summary


def test_answer_stats_count_the_latest_outcome_per_turn() -> None:
    answers = [
        a("a", 1, "failed", reason="timeout", state=""),
        a("a", 1),
        a("b", 1, "skipped", state="Query length too short", reason="Query length too short"),
        a("c", 1, "rejected", state="success", reason="refusal"),
        a("d", 1, "rejected", state="success", reason="refusal"),
        a("d", 2, "vetoed"),
    ]
    s = answer_stats(AnswerIndex.of_rows(answers), top=10, examples=3)
    assert s.rows == 6 and sum(s.by_kind.values()) == 5
    assert s.by_kind == {"answered": 1, "rejected": 2, "skipped": 1, "vetoed": 1}
    assert s.by_state == {"success": 3, "Query length too short": 1, "Irrelevant answer.": 1}
    assert s.by_reason == {"refusal": 2, "Query length too short": 1}
    assert next(iter(s.by_kind)) == "rejected"  # most common first
    assert list(s.rag_seconds) == [0.1] * 6, "latency counts every attempt"
    assert list(s.answer_chars) == [len("a-a1")]
