"""Answer gate, XTuner records, and building the dataset from ledger rows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import re

import pytest

from pipeline.outputs.answer_stats import answer_stats
from pipeline.outputs.dataset import conversation_record, conversations_with_sources, write_dataset
from pipeline.qa.gate import compile_gate, gate_answer
from pipeline.errors import SettingsError
from pipeline.settings import ConversationSettings, parse_settings
from pipeline.store.answers import AnswerIndex

CS = ConversationSettings(min_answer_chars=10)
LONG = "天命人是玩家扮演的角色，是一只寻找大圣六根的猴子。"


# --------------------------------------------------------------------------- gate


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        (f"根据提供的材料，{LONG}", LONG),
        (f"根据已知信息：{LONG}", LONG),
        (f"根据材料 {LONG}", LONG),
        (f"根据提供的材料，根据已知信息，{LONG}", LONG),
        ("Based on the provided materials, the Destined One is the player's monkey.",
         "The Destined One is the player's monkey."),
        ("According to the context: Wukong was released on 2024-08-20.",
         "Wukong was released on 2024-08-20."),
        (f"  {LONG}  ", LONG),
        ("第一行  有   多余空格\r\n\r\n\r\n\r\n第二行", "第一行 有 多余空格\n\n第二行"),
    ],
)
def test_gate_strips_lead_ins_and_tidies_whitespace(raw: str, cleaned: str) -> None:
    assert gate_answer(raw, CS) == (cleaned, None)


def test_gate_leaves_a_lead_in_inside_the_text() -> None:
    text = f"{LONG}这些都是根据提供的材料整理的。"
    assert gate_answer(text, CS) == (text, None)


def test_gate_keeps_lowercase_starts_it_did_not_create() -> None:
    assert gate_answer("iPhone ports are not planned for the game.", CS)[0][0] == "i"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("根据提供的材料，", "empty"),
        ("根据提供的材料，我无法回答这个问题。", "refusal"),
        ("抱歉，我不知道这个问题的答案，请换个问题。", "refusal"),
        ("材料中没有提到黄眉的具体来历和他的结局。", "refusal"),
        ("I don't know the answer to that question.", "refusal"),
        ("Sorry, I cannot answer this from the given documents.", "refusal"),
        ("太短了", "too_short"),
        ("根据提供的材料，是猴子。", "too_short"),
        (f"{LONG}<|im_end|>", "template_marker"),
    ],
)
def test_gate_rejects_with_a_reason(raw: str, reason: str) -> None:
    assert gate_answer(raw, CS)[1] == reason


def test_a_refusal_word_deep_inside_a_long_answer_is_not_a_refusal() -> None:
    text = LONG * 6 + "至于他的结局，材料中未提及。"
    assert gate_answer(text, CS) == (text, None)


def test_min_answer_chars_is_inclusive_and_zero_keeps_short_answers() -> None:
    ten = "一二三四五六七八九十"
    assert gate_answer(ten, CS) == (ten, None)
    assert gate_answer(ten[:-1], CS)[1] == "too_short"
    assert gate_answer("是。", dataclasses.replace(CS, min_answer_chars=0)) == ("是。", None)


def test_gate_patterns_come_from_settings() -> None:
    cs = dataclasses.replace(CS, strip_prefixes=(r"^答[:：]\s*",), refusal_patterns=(r"无可奉告",))
    gate = compile_gate(cs)
    assert gate(f"答：{LONG}") == (LONG, None)
    assert gate(f"{LONG}无可奉告")[1] == "refusal"
    assert gate(f"根据提供的材料，{LONG}") == (f"根据提供的材料，{LONG}", None)


@pytest.mark.parametrize("key", ["strip_prefixes", "refusal_patterns"])
def test_a_bad_pattern_is_a_settings_error_naming_the_key(key: str) -> None:
    with pytest.raises(SettingsError, match=rf"\[conversations\] {key}: bad regular expression '\(oops'"):
        compile_gate(dataclasses.replace(CS, **{key: ("(oops",)}))


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


@pytest.mark.parametrize(
    ("patterns", "answer", "reason"),
    [
        (["无法回答", "不知道"], "抱歉，我不知道这件事的详细经过与背景。", "refusal"),
        (["无法回答", "不知道"], "天命人手持如意金箍棒，踏上取回六根的旅程。", None),
        # Joined, a back-reference or an inline flag would change meaning: checked one by one.
        ([r"(无法)\1", "不知道"], "无法无法确定这件事情的经过与背景。", "refusal"),
        ([r"(无法)\1", r"(?i)sorry"], "SORRY, the material does not say so at all.", "refusal"),
        ([r"(无法)\1", r"(?i)sorry"], "无法确定，但材料写了天命人取回六根的经过。", None),
    ],
)
def test_refusal_patterns_reject_as_any_one_of_them_would(
    patterns: list[str], answer: str, reason: str | None
) -> None:
    cs = parse_settings({"conversations": {"refusal_patterns": patterns, "min_answer_chars": 5}},
                        source="test", environ={}).conversations
    assert compile_gate(cs)(answer)[1] == reason


def test_tidy_takes_its_shortcut_only_where_the_long_way_changes_nothing() -> None:
    import random

    from pipeline.qa.gate import _tidy

    def long_way(text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = re.sub(r"[ \t\u3000\xa0]+", " ", text)
        text = re.sub(r"[ \t]+\n", "\n", text)
        return re.sub(r"\n{3,}", "\n\n", text).strip()

    rng = random.Random(7)
    alphabet = ["天", "命", "a", " ", "\n", "\r", "\t", "\u3000", "\xa0", "。"]
    for _ in range(20_000):
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 12)))
        assert _tidy(text) == long_way(text), repr(text)
