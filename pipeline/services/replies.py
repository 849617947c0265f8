"""What a chat reply means, pure: the answer proper, and why a reply is unusable.

Reasoning models (Qwen3, QwQ, DeepSeek-R1 behind vLLM, SGLang, Ollama, LM
Studio) put their scratch work in ``content`` as ``<think> ... </think>``
before the answer; the scratch work often holds drafts that look exactly
like the answer (a draft question list). None of it is data:
:func:`answer_proper` removes it, and the LLM client returns only what is
left, so every caller gets the answer proper. A ``reasoning_content`` /
``reasoning`` field beside ``content`` is never read.

Unusable reply kinds (:data:`UNUSABLE_KINDS`), with what a person can do:

``no_choices``      the API answered without any choice
``empty``           ``content`` null or blank
``reasoning_only``  nothing but reasoning (an unclosed think block, or one with nothing after it)
``cut_off``         ``finish_reason: "length"`` and nothing usable: max_tokens ran out
``refused``         the provider's content filter refused the prompt or withheld the reply
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "ADVICE",
    "REFUSED",
    "THINK_TAG",
    "UNUSABLE_KINDS",
    "answer_proper",
    "has_think_tag",
    "refusal_of",
    "unusable_kind",
]

# The state an item refused by the provider is recorded with, before its words.
REFUSED: Final = "refused by the provider"

UNUSABLE_KINDS: Final = ("no_choices", "empty", "reasoning_only", "cut_off", "refused")

# What to do about each kind, for the report and the logs.
ADVICE: Final[Mapping[str, str]] = {
    "no_choices": "the API answered without any choice: check [llm] model and the provider's status",
    "empty": "the model returned no text: check [llm] model (a chat model, not a base or tool-call model)",
    "reasoning_only": "the model spent its reply thinking: raise [llm] max_tokens or turn thinking off "
                      "(Qwen3: /no_think or enable_thinking=false)",
    "cut_off": "max_tokens ran out before any answer: raise [llm] max_tokens or turn thinking off",
    "refused": "the provider's content filter refused the prompt (its words are quoted): the item is "
               "skipped; an aspect or passage refused every time needs rewording or another provider",
}

# <think>, <thinking>, <reasoning>, in any case, attributes allowed. Models
# trained on other tags are rare; these are the ones the serving stacks emit.
THINK_TAG: Final = re.compile(r"</?\s*(?:think|thinking|reasoning)\b[^>]*>", re.IGNORECASE)
_OPEN = re.compile(r"<\s*(?:think|thinking|reasoning)\b[^>]*>", re.IGNORECASE)
_CLOSE = re.compile(r"<\s*/\s*(?:think|thinking|reasoning)\s*>", re.IGNORECASE)


def answer_proper(content: str | None) -> str:
    """``content`` without its reasoning, stripped; ``""`` when nothing is left.

    - every ``<think> ... </think>`` block is removed, wherever it stands;
    - a closing tag with no opening before it (DeepSeek-R1's template opens
      the block in the prompt) removes everything before it;
    - an opening tag never closed (the reply was cut in mid-thought) removes
      everything after it: a reply that is all reasoning is an empty reply.
    """
    if not content:
        return ""
    if "<" not in content:
        return content.strip()
    out: list[str] = []
    pos = 0
    n = len(content)
    while pos < n:
        opening = _OPEN.search(content, pos)
        closing = _CLOSE.search(content, pos)
        if closing is not None and (opening is None or closing.start() < opening.start()):
            # Reasoning opened before anything we saw: drop what came before it.
            out.clear()
            pos = closing.end()
            continue
        if opening is None:
            out.append(content[pos:])
            break
        out.append(content[pos:opening.start()])
        end = _CLOSE.search(content, opening.end())
        if end is None:
            break  # never closed: the rest is reasoning
        pos = end.end()
    return "".join(out).strip()


def has_think_tag(text: str) -> bool:
    """Whether ``text`` holds a think tag (open or close): reasoning leaked into data."""
    return THINK_TAG.search(text) is not None


def unusable_kind(content: str | None, answer: str, finish_reason: str | None) -> str | None:
    """Why a reply whose ``content`` left ``answer`` proper is unusable (one of
    :data:`UNUSABLE_KINDS`), or None when it is usable. ``no_choices`` is the
    caller's to say (there is no content to judge)."""
    if finish_reason == "content_filter":
        return "refused"
    if answer:
        return None
    if finish_reason == "length":
        return "cut_off"
    if content and content.strip():
        return "reasoning_only"
    return "empty"


# Providers' content-safety refusals, by error code and by their own words.
_REFUSAL_CODES: Final = frozenset({
    "data_inspection_failed",      # Qwen / DashScope
    "datainspectionfailed",
    "content_policy_violation",    # OpenAI
    "content_filter",              # Azure OpenAI, Moonshot
    "responsibleaipolicyviolation",
})
_REFUSAL_WORDS: Final = re.compile(
    r"content exists risk"                           # DeepSeek
    r"|data[_ ]inspection[_ ]failed"
    r"|inappropriate content"                        # DashScope's message
    r"|content[_ ](?:management[_ ])?polic"          # OpenAI / Azure
    r"|content[_ ]filter"
    r"|safety system"
    r"|considered high risk"                         # Moonshot
    r"|敏感|违规|不安全|安全审核|内容审核",
    re.IGNORECASE,
)


def refusal_of(status: int, body: Any, message: str) -> bool:
    """Whether an error answer (``status``, decoded ``body``, the message
    quoted from it) is a content-safety refusal of this one prompt rather than
    a request that is wrong for every item."""
    if status not in (400, 403, 422, 451):
        return False
    codes: list[str] = []
    inner = body.get("error") if isinstance(body, Mapping) else None
    for part in (body, inner, inner.get("innererror") if isinstance(inner, Mapping) else None):
        if isinstance(part, Mapping):
            codes.extend(str(part.get(k, "")).lower() for k in ("code", "type"))
    if any(c in _REFUSAL_CODES for c in codes):
        return True
    return _REFUSAL_WORDS.search(message) is not None
