"""qa --dry-run's plan: requests, tokens, cost and time, fresh and on resume."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.services.llm import estimate_prompt_tokens
from pipeline.outputs.dry_run import ASSUMED_LLM_LATENCY_S, ASSUMED_RAG_LATENCY_S, plan_run
from pipeline.qa.questions import question_messages
from pipeline.store.view import state_from_rows
from pipeline.settings import Settings, parse_settings
from pipeline.store.resume import RunState


def settings(**sections: dict[str, Any]) -> Settings:
    data: dict[str, Any] = {
        "questions": {"aspects": ["甲", "乙"], "per_aspect": 5, "batch_size": 3},
        "llm": {"rpm": 1000, "tpm": 10_000_000, "concurrency": 4},
        "rag": {"backend": "huixiangdou"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_settings(data, environ={})


def fresh(s: Settings) -> RunState:
    return state_from_rows(s, {})


@pytest.mark.parametrize(
    ("turns", "question_calls", "followups", "rag"),
    [
        ((1, 1), 4, 0, 10),  # 2 aspects x ceil(5/3) batches; one RAG request per question
        ((3, 3), 4, 20, 30),  # two follow-ups per conversation
        ((2, 4), 4, 20, 30),  # expected turns (2+4)/2 = 3
        ((1, 2), 4, 5, 15),  # expected 1.5 turns: 10 x 0.5 follow-ups
    ],
)
def test_fresh_run_counts(turns: tuple[int, int], question_calls: int, followups: int, rag: int) -> None:
    s = settings(conversations={"min_turns": turns[0], "max_turns": turns[1]})
    plan = plan_run(s, fresh(s))
    assert (plan.questions_left, plan.question_calls, plan.followup_calls, plan.rag_requests) == (
        10, question_calls, followups, rag)
    assert plan.llm_calls == question_calls + followups
    assert plan.answer_calls == 0


def _questions(aspect: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"{aspect}{i}", "aspect": aspect, "text": f"{aspect}问题{i}？", "seq": start + i}
            for i in range(n)]


def _answer(conv: str, turn: int, kind: str = "answered") -> dict[str, Any]:
    return {"conv": conv, "turn": turn, "question": f"{conv}-{turn}", "kind": kind,
            "answer": "答" * 20 if kind == "answered" else "", "state": "success"}


@pytest.mark.parametrize(
    ("turns", "answers", "followup_rows", "exhausted", "expected"),
    [
        # 甲 done (5, three answered), 乙 has 2: 3 questions left (1 batch); 2 甲 pending
        ((1, 1), ["甲0", "甲1", "甲2"], [], False, {"questions_left": 3, "question_calls": 1,
                                                  "pending_conversations": 4, "rag_requests": 7,
                                                  "followup_calls": 0}),
        # 乙 given up: nothing more to write for it
        ((1, 1), ["甲0", "甲1", "甲2"], [], True, {"questions_left": 0, "question_calls": 0,
                                                 "pending_conversations": 4, "rag_requests": 4,
                                                 "followup_calls": 0}),
        # three turns: 甲0 has turn 1 answered (2 follow-ups, 2 turns left); 甲1 also has its
        # turn-2 follow-up written already (1 follow-up, 2 turns left); 5 untouched pending
        # conversations (3 turns, 2 follow-ups each); 3 new ones (3 turns, 2 follow-ups each)
        ((3, 3), ["甲0", "甲1"], [("甲1", 2)], False, {"questions_left": 3, "question_calls": 1,
                                                      "pending_conversations": 7,
                                                      "rag_requests": 2 + 2 + 5 * 3 + 3 * 3,
                                                      "followup_calls": 2 + 1 + 5 * 2 + 3 * 2}),
    ],
)
def test_resume_counts_only_what_is_left(
    turns: tuple[int, int], answers: list[str], followup_rows: list[tuple[str, int]],
    exhausted: bool, expected: dict[str, int],
) -> None:
    s = settings(conversations={"min_turns": turns[0], "max_turns": turns[1]})
    questions = _questions("甲", 5) + _questions("乙", 2, start=5)
    questions += [{"id": f"f{c}{t}", "conv": c, "turn": t, "text": f"{c}追问{t}？"} for c, t in followup_rows]
    qs = s.questions
    events = [{"event": "aspect_exhausted", "aspect": "乙", "why": "saturated", "per_aspect": qs.per_aspect,
               "max_stale_rounds": qs.max_stale_rounds}] if exhausted else []
    state = state_from_rows(s, {"questions": questions, "answers": [_answer(c, 1) for c in answers],
                                "events": events})
    plan = plan_run(s, state)
    assert {k: getattr(plan, k) for k in expected} == expected


def test_nothing_left_plans_nothing() -> None:
    s = settings()
    questions = _questions("甲", 5) + _questions("乙", 5, start=5)
    state = state_from_rows(s, {"questions": questions, "answers": [_answer(q["id"], 1) for q in questions]})
    plan = plan_run(s, state)
    assert (plan.llm_calls, plan.rag_requests, plan.prompt_tokens, plan.cost, plan.minutes) == (0, 0, 0, 0.0, 0.0)


def test_prompt_tokens_come_from_the_real_question_prompt() -> None:
    s = settings(questions={"aspects": ["甲"], "per_aspect": 3, "batch_size": 3})
    plan = plan_run(s, fresh(s))
    assert plan.question_calls == 1
    assert plan.prompt_tokens == estimate_prompt_tokens(question_messages(s.questions, "甲", 3, []))


def test_cost_uses_the_llm_prices_for_typical_and_max_completions() -> None:
    s = settings(llm={"price_input_per_m": 2.0, "price_output_per_m": 8.0, "max_tokens": 500})
    plan = plan_run(s, fresh(s))
    assert plan.cost == pytest.approx((plan.prompt_tokens * 2.0 + plan.completion_tokens * 8.0) / 1e6)
    assert plan.completion_tokens_max == plan.llm_calls * 500
    assert plan.cost_max == pytest.approx((plan.prompt_tokens * 2.0 + plan.completion_tokens_max * 8.0) / 1e6)
    assert plan.completion_tokens < plan.completion_tokens_max


@pytest.mark.parametrize(
    ("llm", "bound"),
    [
        ({"rpm": 1, "tpm": 10_000_000, "concurrency": 64}, "rpm"),
        ({"rpm": 10_000, "tpm": 100, "concurrency": 64}, "tpm"),
        ({"rpm": 10_000, "tpm": 10_000_000, "concurrency": 1}, "concurrency"),
    ],
)
def test_llm_time_is_set_by_the_tightest_limit(llm: dict[str, int], bound: str) -> None:
    s = settings(llm=llm)
    plan = plan_run(s, fresh(s))
    assert plan.llm_bound == bound
    expected = {
        "rpm": plan.llm_calls / llm["rpm"],
        "tpm": (plan.prompt_tokens + plan.completion_tokens) / llm["tpm"],
        "concurrency": plan.llm_calls * ASSUMED_LLM_LATENCY_S / llm["concurrency"] / 60,
    }[bound]
    assert plan.llm_minutes == pytest.approx(expected)


@pytest.mark.parametrize(
    ("urls", "per_server", "rpm", "minutes"),
    [
        (1, 1, 0, 10 * ASSUMED_RAG_LATENCY_S / 60),
        (2, 1, 0, 10 * ASSUMED_RAG_LATENCY_S / 2 / 60),
        (2, 2, 0, 10 * ASSUMED_RAG_LATENCY_S / 4 / 60),
        (4, 4, 1, 10.0),  # 10 requests at 1 per minute
    ],
)
def test_rag_time_scales_with_servers_and_slots(urls: int, per_server: int, rpm: int, minutes: float) -> None:
    s = settings(huixiangdou={"urls": [f"http://127.0.0.1:{23333 + i}" for i in range(urls)],
                              "concurrency_per_server": per_server, "rpm": rpm})
    plan = plan_run(s, fresh(s))
    assert plan.rag_requests == 10
    assert plan.rag_minutes == pytest.approx(minutes)
    assert plan.minutes == max(plan.rag_minutes, plan.llm_minutes)


def test_local_backend_answers_with_the_llm() -> None:
    s = settings(rag={"backend": "local"})
    plan = plan_run(s, fresh(s))
    assert plan.answer_calls == plan.rag_requests == 10
    assert plan.llm_calls == plan.question_calls + 10
    assert plan.rag_minutes == 0.0
    # The passages dominate the prompt: at least max_context_chars tokens per answer.
    assert plan.prompt_tokens > 10 * s.rag.max_context_chars


def test_lines_state_the_assumptions() -> None:
    s = settings()
    text = "\n".join(plan_run(s, fresh(s), llm_latency_s=7, rag_latency_s=45).lines())
    assert "LLM call 7 s with 4 in flight" in text
    assert "RAG request 45 s on 1 slot(s)" in text
    assert "RAG requests: 10 (HuixiangDou)" in text
    assert "LLM requests: 4 (4 question batches, 0 follow-ups)" in text


@pytest.mark.parametrize(("language", "limits", "chars"), [
    ("zh", {"min_chars": 4, "max_chars": 60}, 32),
    # Words for a space-separated language: 16 words of a typical question, not 60 characters' worth.
    ("en", {"min_words": 3, "max_words": 30}, len(" ".join(["word"] * 16))),
])
def test_a_typical_question_is_measured_as_its_language_is_written(
    language: str, limits: dict[str, int], chars: int
) -> None:
    s = settings(questions={"language": language, "aspects": ["甲"], **limits})
    assert plan_run(s, fresh(s)).assumptions["question_chars"] == chars
