"""Settings that change between runs on one out_dir: the ledgers record what
shaped each row, a resume says in one line what changed and what it means,
and conversations.jsonl always follows the current settings."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from pipeline.qa.stage import run_qa
from pipeline.store.shape import shape_id, shape_of
from tests.fakes.huixiangdou_server import FakeHuixiangdou
from tests.fakes.llm_server import FakeLLM
from tests.test_qa import SYSTEM, asked, conversations, llm, make_settings, rows, servers  # noqa: F401
from tests.fakes.loops import BOTH_LOOPS

pytestmark = BOTH_LOOPS

ASPECTS = ["战斗系统", "游戏世界观", "主要角色"]


def report(settings) -> dict:  # type: ignore[no-untyped-def]
    return orjson.loads((settings.out_dir / "report.json").read_bytes())


def changed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("settings changed")]


async def test_fewer_turns_a_new_system_prompt_and_a_removed_aspect_rebuild_the_dataset_to_match(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou], caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    first = make_settings(tmp_path, llm, servers, questions={"aspects": ASPECTS, "per_aspect": 3},
                          conversations={"min_turns": 3, "max_turns": 3})
    assert (await run_qa(first, install_signals=False)).status == "complete"
    made = conversations(first)
    assert made and all(len(c["conversation"]) == 3 for c in made)
    start = [e for e in rows(first, "events") if e["event"] == "run_start"][0]
    assert start["shape"] == shape_of(first) and start["seq_from"] == 0
    assert {r["shape"] for r in rows(first, "answers")} == {shape_id(shape_of(first))}
    aspect_of = {q["id"]: q["aspect"] for q in rows(first, "questions") if "conv" not in q}
    answered = {(r["conv"], r["turn"]) for r in rows(first, "answers") if r["kind"] == "answered"}
    kept_with_two = sum(1 for conv, a in aspect_of.items() if a != "主要角色" and (conv, 2) in answered
                        and (conv, 1) in answered)
    removed = sum(1 for conv, a in aspect_of.items() if a == "主要角色" and (conv, 1) in answered)
    assert kept_with_two and removed, "the case has turns to cut and an aspect's answers to leave out"
    asked_before = asked(servers)

    second = make_settings(tmp_path, llm, servers, questions={"aspects": ASPECTS[:2], "per_aspect": 3},
                           conversations={"system_prompt": "新的系统提示。", "min_turns": 1, "max_turns": 1})
    with caplog.at_level(logging.WARNING):
        result = await run_qa(second, install_signals=False)

    assert result.status == "complete"
    assert f"conversations {len(conversations(second))} (left out or cut by the current settings: " in result.line()
    assert f"aspect 主要角色 {removed}" in result.line() and f"cut to 1 turn {kept_with_two}" in result.line()
    assert asked(servers) == asked_before, "nothing was left to ask: no request"
    [line] = changed_lines(caplog)
    assert "max_turns 3 -> 1" in line and "min_turns 3 -> 1" in line and "aspects -主要角色" in line
    assert "system prompt" in line and "cut to 1 turn" in line and "new system prompt" in line
    assert f"aspect 主要角色: {sum(1 for a in aspect_of.values() if a == '主要角色')}" in line
    now = conversations(second)
    assert now and all(len(c["conversation"]) == 1 for c in now)
    assert all(c["conversation"][0]["system"] == "新的系统提示。" for c in now)
    kept_first = {r["question"] for r in rows(second, "answers") if r["turn"] == 1 and aspect_of[r["conv"]] != "主要角色"}
    assert {c["conversation"][0]["input"] for c in now} <= kept_first
    left_out = report(second)["conversations"]["left_out"]
    assert left_out.get("aspect 主要角色") == removed
    assert left_out.get("cut to 1 turn") == kept_with_two
    assert report(second)["questions"]["accepted"] == 6 == report(second)["questions"]["target"], "the removed aspect's questions do not count"


async def test_a_new_topic_sets_the_old_topics_conversations_aside_and_asks_its_own(
    tmp_path: Path, llm: FakeLLM, servers: list[FakeHuixiangdou], caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    # One turn under the old topic: under the new one (two turns) each old
    # conversation would be pending its second turn, were it still in scope.
    old = make_settings(tmp_path, llm, servers, questions={"topic": "旧游戏", "per_aspect": 2},
                        conversations={"min_turns": 1, "max_turns": 1})
    assert (await run_qa(old, install_signals=False)).status == "complete"
    old_ids = {q["id"] for q in rows(old, "questions") if "conv" not in q}
    assert not [q for q in rows(old, "questions") if "conv" in q]

    new = make_settings(tmp_path, llm, servers, questions={"topic": "新游戏", "per_aspect": 2},
                        conversations={"min_turns": 2, "max_turns": 2})
    with caplog.at_level(logging.WARNING):
        assert (await run_qa(new, install_signals=False)).status == "complete"

    [line] = changed_lines(caplog)
    assert "topic '旧游戏' -> '新游戏'" in line and f"topic 旧游戏: {len(old_ids)}" in line
    firsts = [q for q in rows(new, "questions") if "conv" not in q]
    new_ids = {q["id"] for q in firsts} - old_ids
    assert len(new_ids) == 6, "every aspect got its questions again, under the new topic"
    followups = [q for q in rows(new, "questions") if "conv" in q]
    assert [q for q in followups if q["conv"] in new_ids], "the new conversations got their second turn"
    assert not [q for q in followups if q["conv"] in old_ids], "no old conversation was continued under the new topic"
    # A follow-up is kept as asked; the server, which keeps no history, gets it under the new topic.
    sent = asked(servers)
    assert all(f"关于《新游戏》，{q['text']}" in sent for q in followups if q["conv"] in new_ids)
    answered_first = {r["question"] for r in rows(new, "answers") if r["turn"] == 1 and r["conv"] in new_ids}
    assert {c["conversation"][0]["input"] for c in conversations(new)} <= answered_first
    assert report(new)["conversations"]["set_aside"] == {"topic 旧游戏": len(old_ids)}


def test_the_line_names_each_kind_of_change_and_stays_silent_when_nothing_changed() -> None:
    import dataclasses

    from pipeline.settings import parse_settings
    from pipeline.store.shape import change_line

    base = parse_settings({}, environ={})
    old = shape_of(base)
    assert change_line(None, old, made=5, set_aside={}) is None, "no earlier shape: nothing to compare"
    assert change_line(old, shape_of(base), made=5, set_aside={}) is None
    other = dataclasses.replace(
        base,
        llm=dataclasses.replace(base.llm, model="other-model"),
        conversations=dataclasses.replace(base.conversations, keep_short=not base.conversations.keep_short,
                                          min_answer_chars=base.conversations.min_answer_chars + 1),
    )
    line = change_line(old, shape_of(other), made=5, set_aside={})
    assert line is not None and "\n" not in line
    assert "model 'deepseek-ai/DeepSeek-V2.5' -> 'other-model'" in line
    assert "keep_short" in line and "answer gate" in line and "system prompt" not in line
    assert "rows already made stay as they were made; new ones follow the new settings" in line
