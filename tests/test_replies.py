"""The answer proper of a model's reply, and why a reply is unusable (pure)."""

from __future__ import annotations

import pytest

from pipeline.services.replies import (
    answer_proper,
    has_think_tag,
    refusal_of,
    unusable_kind,
)

DRAFT = "先列个草稿：['草稿问题甲是什么？', '草稿问题乙是什么？']"


@pytest.mark.parametrize(
    ("content", "answer"),
    [
        ("['问题一是什么？']", "['问题一是什么？']"),
        (f"<think>\n{DRAFT}\n</think>\n\n['问题一是什么？']", "['问题一是什么？']"),
        (f"<THINK>{DRAFT}</THINK>answer", "answer"),
        (f"<think>{DRAFT}</think>a<think>again</think> b", "a b"),
        (f"<thinking>{DRAFT}</thinking>answer", "answer"),
        (f"<reasoning>{DRAFT}</reasoning>answer", "answer"),
        # DeepSeek-R1: the chat template opened the block in the prompt.
        (f"{DRAFT}\n</think>\n\nanswer", "answer"),
        # Cut by max_tokens in mid-thought: all reasoning, no answer.
        (f"<think>\n{DRAFT}", ""),
        (f"answer<think>{DRAFT}", "answer"),
        ("<think></think>", ""),
        ("  spaced  ", "spaced"),
        ("", ""),
        (None, ""),
        ("a < b and c > d", "a < b and c > d"),
        ("<thinker>x</thinker>", "<thinker>x</thinker>"),
    ],
)
def test_the_answer_proper_never_holds_reasoning(content: str | None, answer: str) -> None:
    assert answer_proper(content) == answer


@pytest.mark.parametrize(
    ("content", "finish", "kind"),
    [
        ("answer", "stop", None),
        ("answer", "length", None),           # a cut answer is still text; the parsers judge it
        ("", "stop", "empty"),
        (None, "stop", "empty"),
        ("   ", "stop", "empty"),
        ("<think>all reasoning", "stop", "reasoning_only"),
        ("<think>all reasoning", "length", "cut_off"),
        (None, "length", "cut_off"),
        (None, "content_filter", "refused"),
        ("half an ans", "content_filter", "refused"),
    ],
)
def test_unusable_kinds(content: str | None, finish: str, kind: str | None) -> None:
    assert unusable_kind(content, answer_proper(content), finish) == kind


@pytest.mark.parametrize(
    ("status", "body", "message", "refused"),
    [
        (400, {"error": {"message": "Content Exists Risk", "type": "invalid_request_error"}},
         "Content Exists Risk", True),
        (400, {"error": {"code": "data_inspection_failed", "message": "Input data may contain inappropriate content."}},
         "Input data may contain inappropriate content.", True),
        (400, {"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content."},
         "Output data may contain inappropriate content.", True),
        (400, {"error": {"code": "content_policy_violation", "message": "rejected by our safety system"}},
         "rejected by our safety system", True),
        (400, {"error": {"code": "content_filter", "message": "filtered",
                         "innererror": {"code": "ResponsibleAIPolicyViolation"}}}, "filtered", True),
        # Wrong for every item: not a refusal.
        (400, {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}},
         "max_tokens is too large", False),
        (422, {"detail": "temperature out of range"}, "temperature out of range", False),
        (500, {"error": {"message": "content filter service down"}}, "content filter service down", False),
    ],
)
def test_provider_refusals_are_told_from_bad_requests(status: int, body: object, message: str, refused: bool) -> None:
    assert refusal_of(status, body, message) is refused


def test_think_tags_are_seen_open_or_closed() -> None:
    assert has_think_tag("a</think>b") and has_think_tag("<think>") and not has_think_tag("<b>think</b>")
