"""``qa --dry-run``: what a run will ask for, cost and take, before paying for any of it.

Pure: :func:`plan_run` takes the settings and the run state (derived from the
ledgers, so a dry run on a half-done folder plans the resume) and counts:

- question calls: per aspect, the questions still wanted over ``batch_size``,
  rounded up (a lower bound: duplicates and rejects cost more rounds);
- passage calls: one per selected passage of the corpus not asked yet
  (``[questions] source`` "corpus" or "both"), each writing up to
  ``per_passage`` questions (counted at that most);
- follow-up calls: one per turn after the first, for the conversations still
  to write (expected turns ``(min_turns + max_turns) / 2``, the mean of the
  uniform draw in :func:`pipeline.store.resume.target_turns`) and for the turns left
  in pending ones (their targets are known exactly);
- RAG requests: one per turn still to ask; with ``[rag] backend = "local"``
  each is also an LLM call;
- tokens: :func:`pipeline.services.llm.estimate_prompt_tokens` on the real prompts,
  built with typical-length questions and answers; completions at a typical
  length, and at most ``max_tokens``;
- time: the LLM side is bound by rpm, tpm or concurrency x an assumed latency,
  whichever is slowest; the RAG side by servers x concurrency_per_server x an
  assumed latency (and its rpm). The stages overlap, so the slower side sets
  the pace. The assumptions are fields of :class:`Plan` and printed with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.services.llm import estimate_prompt_tokens
from pipeline.qa.questions import followup_messages, passage_messages, question_messages
from pipeline.presets import PRESETS
from pipeline.settings import Settings
from pipeline.store.resume import SAMPLE, RunState

__all__ = ["ASSUMED_ANSWER_CHARS", "ASSUMED_LLM_LATENCY_S", "ASSUMED_RAG_LATENCY_S", "Plan", "plan_run"]

# Assumptions, stated in the output. HuixiangDou's chat_in_group makes several
# LLM calls and a search per question: tens of seconds is normal.
ASSUMED_LLM_LATENCY_S = 10.0
ASSUMED_RAG_LATENCY_S = 30.0
ASSUMED_ANSWER_CHARS = 300


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run still has to do, and its estimated price and duration."""

    questions_left: int  # aspect questions, plus corpus questions at per_passage a passage
    question_calls: int
    passage_calls: int
    new_conversations: int
    pending_conversations: int
    expected_turns: float  # per new conversation
    followup_calls: int
    rag_requests: int
    answer_calls: int  # LLM calls of the local backend (0 for HuixiangDou)
    prompt_tokens: int
    completion_tokens: int  # at a typical completion length
    completion_tokens_max: int  # at max_tokens per call
    cost: float
    cost_max: float
    llm_minutes: float
    rag_minutes: float
    llm_bound: str  # which limit sets the LLM side's pace: "rpm", "tpm" or "concurrency"
    assumptions: dict[str, float | str] = field(default_factory=dict)

    @property
    def llm_calls(self) -> int:
        return self.question_calls + self.passage_calls + self.followup_calls + self.answer_calls

    @property
    def minutes(self) -> float:
        """Estimated wall time: the slower of the two overlapping sides."""
        return max(self.llm_minutes, self.rag_minutes)

    def lines(self) -> list[str]:
        """The plan as text for the dry run."""
        a = self.assumptions
        return [
            f"questions to write: {self.questions_left} "
            f"({self.question_calls} LLM calls of up to {a['batch_size']} questions"
            + (f", {self.passage_calls} passages of the corpus at up to {a['per_passage']} each"
               if self.passage_calls else "") + ")",
            f"conversations: {self.new_conversations} new (about {self.expected_turns:g} turns each), "
            f"{self.pending_conversations} pending from earlier runs",
            f"LLM requests: {self.llm_calls} ({self.question_calls} question batches, "
            + (f"{self.passage_calls} passages, " if self.passage_calls else "") +
            f"{self.followup_calls} follow-ups" + (f", {self.answer_calls} local answers" if self.answer_calls else "")
            + ")",
            f"RAG requests: {self.rag_requests} ({a['backend']})",
            f"tokens: about {self.prompt_tokens} prompt + {self.completion_tokens} completion "
            f"(at most {self.completion_tokens_max} completion at max_tokens {a['max_tokens']})",
            f"cost: about {self.cost:.4f} (at most {self.cost_max:.4f}) at the [llm] prices",
            f"time: about {_duration(self.minutes)} "
            f"(LLM side {_duration(self.llm_minutes)}, bound by {self.llm_bound}; "
            f"RAG side {_duration(self.rag_minutes)})",
            f"assumed: LLM call {a['llm_latency_s']:g} s with {a['llm_concurrency']} in flight, "
            f"rpm {a['rpm']}, tpm {a['tpm']}; RAG request {a['rag_latency_s']:g} s on "
            f"{a['rag_slots']} slot(s) ({a['rag_servers']} server(s) x {a['concurrency_per_server']})"
            + (f", rpm {a['rag_rpm']}" if a["rag_rpm"] else "")
            + f"; typical question {a['question_chars']} chars, answer {a['answer_chars']} chars",
        ]


def _text_tokens(text: str) -> int:
    """Tokens of a bare text, without the per-message overhead the estimate adds."""
    return estimate_prompt_tokens([{"content": text}]) - estimate_prompt_tokens([{"content": ""}])


def _duration(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


def plan_run(
    settings: Settings,
    state: RunState,
    *,
    llm_latency_s: float = ASSUMED_LLM_LATENCY_S,
    rag_latency_s: float = ASSUMED_RAG_LATENCY_S,
    answer_chars: int = ASSUMED_ANSWER_CHARS,
    backend: str | None = None,
    passages: Sequence[str] = (),
) -> Plan:
    """Count the calls, tokens, cost and time of running ``settings`` from ``state``.
    ``backend``: the answer backend the run would use ("huixiangdou" or
    "local", as :func:`pipeline.services.backend.choose_backend` decides);
    None takes ``[rag] backend``, counting "auto" as HuixiangDou.
    ``passages``: the ids of the selected passages of the corpus
    (:func:`pipeline.qa.passages.plan_passages`), those asked already left out."""
    qs, cs, llm, hx = settings.questions, settings.conversations, settings.llm, settings.huixiangdou
    # A typical question: halfway between the length limits, in the language's unit.
    if PRESETS[qs.language].length_unit == "words":
        words = (qs.min_words + qs.max_words) // 2
        typical_q = ("word " * words).strip()
        q_chars = len(typical_q)
    else:
        q_chars = (qs.min_chars + qs.max_chars) // 2
        typical_q = "问" * q_chars
    typical_a = "答" * answer_chars if qs.language == "zh" else ("word " * max(1, answer_chars // 5)).strip()
    # A question in a list: its text plus quotes and a separator.
    per_question_tokens = _text_tokens(typical_q) + 2

    questions_left = 0
    question_calls = 0
    prompt = completion = 0
    for aspect in qs.aspects:
        have = state.accepted.get(aspect, 0)
        if aspect in state.exhausted or have >= qs.per_aspect:
            continue
        left = qs.per_aspect - have
        questions_left += left
        while left > 0:
            n = min(qs.batch_size, left)
            sample = [typical_q] * min(SAMPLE, have)
            prompt += estimate_prompt_tokens(question_messages(qs, aspect, n, sample))
            completion += min(llm.max_tokens, n * per_question_tokens + 4)
            question_calls += 1
            have += n
            left -= n

    passage_calls = sum(1 for pid in passages if pid not in state.passages_asked)
    if passage_calls:
        # A passage fills its prompt up to passage_size characters.
        typical_passage = ("资" if qs.language == "zh" else "w") * qs.passage_size
        prompt += passage_calls * estimate_prompt_tokens(
            passage_messages(qs, typical_passage, "file.txt", qs.per_passage))
        completion += passage_calls * min(llm.max_tokens, qs.per_passage * per_question_tokens + 4)
        questions_left += passage_calls * qs.per_passage

    expected_turns = (cs.min_turns + cs.max_turns) / 2
    new_turns = questions_left * expected_turns
    pending_turns = sum(p.target - p.next_turn + 1 for p in state.pending)
    pending_followups = sum(
        p.target - p.next_turn + (0 if p.next_question is not None else 1) for p in state.pending
    )
    followup_calls = round(questions_left * (expected_turns - 1)) + pending_followups
    rag_requests = round(new_turns) + pending_turns

    fu_prompt = estimate_prompt_tokens(followup_messages(cs, qs.topic, typical_q, typical_a))
    prompt += followup_calls * fu_prompt
    completion += followup_calls * min(llm.max_tokens, per_question_tokens + 4)

    backend = backend or settings.rag.backend
    answer_calls = rag_requests if backend == "local" else 0
    if answer_calls:
        # Imported here: the local backend pulls in jieba and bm25s.
        from pipeline.services.local_rag import answer_messages

        # Passages fill the prompt up to max_context_chars.
        passages = "料" * settings.rag.max_context_chars
        messages = answer_messages(settings.rag.answer_prompt, cs.system_prompt, qs.topic, passages, typical_q)
        prompt += answer_calls * estimate_prompt_tokens(messages)
        completion += answer_calls * min(llm.max_tokens, _text_tokens(typical_a))

    calls = question_calls + passage_calls + followup_calls + answer_calls
    completion_max = calls * llm.max_tokens
    price_in, price_out = llm.price_input_per_m / 1e6, llm.price_output_per_m / 1e6
    cost = prompt * price_in + completion * price_out
    cost_max = prompt * price_in + completion_max * price_out

    bounds = {
        "rpm": calls / llm.rpm,
        "tpm": (prompt + completion) / llm.tpm,
        "concurrency": calls * llm_latency_s / llm.concurrency / 60,
    }
    llm_bound = max(bounds, key=lambda k: bounds[k])
    slots = len(hx.urls) * hx.concurrency_per_server
    rag_minutes = rag_requests * rag_latency_s / slots / 60 if backend != "local" else 0.0
    if hx.rpm and backend != "local":
        rag_minutes = max(rag_minutes, rag_requests / hx.rpm)

    return Plan(
        questions_left=questions_left,
        question_calls=question_calls,
        passage_calls=passage_calls,
        new_conversations=questions_left,
        pending_conversations=len(state.pending),
        expected_turns=expected_turns,
        followup_calls=followup_calls,
        rag_requests=rag_requests,
        answer_calls=answer_calls,
        prompt_tokens=prompt,
        completion_tokens=completion,
        completion_tokens_max=completion_max,
        cost=cost,
        cost_max=cost_max,
        llm_minutes=bounds[llm_bound],
        rag_minutes=rag_minutes,
        llm_bound=llm_bound,
        assumptions={
            "batch_size": qs.batch_size,
            "per_passage": qs.per_passage,
            "backend": "local index + LLM" if backend == "local" else (
                "HuixiangDou" if backend == "huixiangdou" else "auto: counted as HuixiangDou"),
            "max_tokens": llm.max_tokens,
            "llm_latency_s": llm_latency_s,
            "llm_concurrency": llm.concurrency,
            "rpm": llm.rpm,
            "tpm": llm.tpm,
            "rag_latency_s": rag_latency_s,
            "rag_slots": slots,
            "rag_servers": len(hx.urls),
            "concurrency_per_server": hx.concurrency_per_server,
            "rag_rpm": hx.rpm,
            "question_chars": q_chars,
            "answer_chars": answer_chars,
        },
    )

