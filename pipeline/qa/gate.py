"""The answer gate: clean one backend answer and decide whether it may enter
the dataset. Pure: compiled once from ``[conversations]``, then a function of
the answer alone; the same gate serves every answer backend."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from pipeline.errors import SettingsError
from pipeline.qa.questions import TEMPLATE_MARKERS
from pipeline.settings import ConversationSettings

__all__ = ["REFUSAL_WINDOW", "Gate", "compile_gate", "gate_answer"]

Gate = Callable[[str], tuple[str, str | None]]

_SPACES = re.compile(r"[ \t\u3000\xa0]+")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")

# Refusal patterns are looked for in the answer's opening only: a refusal
# says so up front, while a long answer that notes "材料中未提及……" deep inside
# is a partial answer worth keeping.
REFUSAL_WINDOW = 100




def _compile_all(patterns: Sequence[str], key: str) -> list[re.Pattern[str]]:
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            raise SettingsError(f"[conversations] {key}: bad regular expression {p!r}: {exc}") from None
    return compiled


_BACKREFERENCE = re.compile(r"\\[1-9]|\(\?P=|\(\?[aiLmsux]")


def _any_of(patterns: Sequence[re.Pattern[str]]) -> re.Pattern[str] | None:
    """One pattern that matches where any of ``patterns`` does (one search
    per answer, not one per pattern), or None when they cannot be joined
    safely: a back-reference would point into another pattern's groups, and
    an inline flag applies to the whole of a joined pattern."""
    if not patterns or any(_BACKREFERENCE.search(p.pattern) for p in patterns):
        return None
    try:
        return re.compile("|".join(f"(?:{p.pattern})" for p in patterns))
    except re.error:
        return None


# What _tidy would change besides the ends; most answers hold none of it.
_UNTIDY = ("\r", "\t", "\u3000", "\xa0", "  ", " \n", "\n\n\n")


def _tidy(text: str) -> str:
    if not any(mark in text for mark in _UNTIDY):
        return text.strip()
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def compile_gate(cs: ConversationSettings, *, refusal_window: int = REFUSAL_WINDOW) -> Gate:
    """Compile the answer gate once; the returned callable maps an answer to
    ``(cleaned answer, rejection reason or None)``.

    Reasons: "empty", "template_marker", "refusal", "too_short". Raises
    :class:`SettingsError` naming the key when a pattern is not a valid
    regular expression."""
    prefixes = _compile_all(cs.strip_prefixes, "strip_prefixes")
    refusals = _compile_all(cs.refusal_patterns, "refusal_patterns")
    refusal = _any_of(refusals)
    min_chars = cs.min_answer_chars

    def gate(answer: str) -> tuple[str, str | None]:
        text = _tidy(answer or "")
        if not text:
            return "", "empty"
        if any(m in text for m in TEMPLATE_MARKERS):
            return text, "template_marker"
        # Lead-ins can stack ("根据提供的材料，根据已知信息，…"); strip until none is left.
        changed = True
        stripped_any = False
        while changed and text:
            changed = False
            for p in prefixes:
                stripped = p.sub("", text, count=1).lstrip()
                if stripped != text:
                    text, changed, stripped_any = stripped, True, True
        if not text:
            return "", "empty"
        if stripped_any and text[0].isascii() and text[0].islower():
            # "Based on the context, the game..." -> "The game..."
            text = text[0].upper() + text[1:]
        head = text[:refusal_window]
        if refusal.search(head) if refusal is not None else any(p.search(head) for p in refusals):
            return text, "refusal"
        if len(text) < min_chars:
            return text, "too_short"
        return text, None

    return gate


def gate_answer(answer: str, cs: ConversationSettings) -> tuple[str, str | None]:
    """Clean ``answer`` and say whether it may enter the dataset; see
    :func:`compile_gate`, which callers gating many answers should use."""
    return compile_gate(cs)(answer)
