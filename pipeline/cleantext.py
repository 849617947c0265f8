"""Invisible and control characters, normalised. Pure: one function of a
string, used by the corpus reader (pretraining chunks, local passages) and by
the answer gate (every answer), so both outputs are cleaned by the same rules.

What changes, by the category it is counted under:

    ==============  =====================================================  ===========
    category        characters                                             becomes
    ==============  =====================================================  ===========
    bom             U+FEFF anywhere (two BOM files joined by ``cat``)      removed
    zero_width      U+200B zero width space, U+2060 word joiner            removed
    soft_hyphen     U+00AD                                                 removed
    bidi            U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069         removed
    line_separator  U+2028, U+0085 (NEL) / U+2029                          ``\\n`` / ``\\n\\n``
    page_break      form feed (``pdftotext``'s page break), vertical tab   ``\\n``
    control         ANSI escape sequences (whole), other C0/C1 controls    removed
    ==============  =====================================================  ===========

Kept: tab, ``\\n``, ``\\r`` (newline normalisation is the reader's job),
U+00A0 (a no-break space is a real space), and U+200C/U+200D (zero-width
non-joiner and joiner spell words in Persian and Indic scripts and build emoji
sequences).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["CATEGORIES", "clean_text"]

_RULES: dict[str, tuple[str, str]] = {"\ufeff": ("", "bom"), "\u00ad": ("", "soft_hyphen"),
                                      "\u2028": ("\n", "line_separator"), "\x85": ("\n", "line_separator"),
                                      "\u2029": ("\n\n", "line_separator"),
                                      "\x0c": ("\n", "page_break"), "\x0b": ("\n", "page_break")}
for _ch in "\u200b\u2060":
    _RULES[_ch] = ("", "zero_width")
for _ch in "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069":
    _RULES[_ch] = ("", "bidi")
for _code in [*range(0x09), *range(0x0E, 0x20), *range(0x7F, 0xA0)]:
    _RULES.setdefault(chr(_code), ("", "control"))

CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(cat for _, cat in _RULES.values()))

# An ANSI escape sequence goes whole: removing ESC alone would leave "[31m" in the text.
_ANSI = r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]"
_TARGETS = re.compile(_ANSI + "|[" + "".join(re.escape(c) for c in _RULES) + "]")

_NOTHING: Mapping[str, int] = MappingProxyType({})


def clean_text(text: str) -> tuple[str, Mapping[str, int]]:
    """``text`` with invisible and control characters normalised (see the
    module docstring), and how many of each category were changed (an ANSI
    escape sequence counts once, as "control"). Text with none of them comes
    back as the same object with an empty mapping, after one regex scan."""
    if _TARGETS.search(text) is None:
        return text, _NOTHING
    counts: Counter[str] = Counter()

    def replace(m: re.Match[str]) -> str:
        found = m.group()
        if len(found) > 1 or found not in _RULES:  # an escape sequence
            counts["control"] += 1
            return ""
        repl, category = _RULES[found]
        counts[category] += 1
        return repl

    return _TARGETS.sub(replace, text), counts
