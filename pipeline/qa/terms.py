"""Key terms of a passage, and whether an answer names any of them (pure).

A plain check, for flagging (never dropping) answers that plainly disagree
with the passage their question was written from: the answer names none of
the passage's key terms. Terms are Latin words and numbers (NFKC, case-folded;
words of three letters or more) and, for Han text, character bigrams, so no
word segmenter is needed. A passage's key terms are its terms that few
passages share (at most :data:`RARE_SHARE` of them, at least one), so words
most of the corpus uses (its topic's name) do not count as agreement.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping

__all__ = ["RARE_SHARE", "document_frequency", "key_terms", "names_any", "terms"]

# A term in more than this share of the passages is common, not a key term.
RARE_SHARE = 0.5

_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[^\W_]+")
_STOP = frozenset(
    "the and for are was were with that this from which what when where who whom whose how why has have "
    "had not but its into than then them they their there these those been being also can could would "
    "should will does did about".split()
)


def terms(text: str) -> set[str]:
    """The terms of ``text``: Han character bigrams (a single Han character
    alone is a term too), Latin words of three letters or more that are not
    stop words, and numbers of two digits or more."""
    flat = unicodedata.normalize("NFKC", text).casefold()
    out: set[str] = set()
    for run in _HAN_RUN.findall(flat):
        if len(run) == 1:
            out.add(run)
        out.update(run[i : i + 2] for i in range(len(run) - 1))
    for word in _WORD.findall(_HAN_RUN.sub(" ", flat)):
        if word.isdigit():
            if len(word) >= 2:
                out.add(word)
        elif len(word) >= 3 and word not in _STOP:
            out.add(word)
    return out


def document_frequency(passages: Iterable[str]) -> tuple[Counter[str], int]:
    """How many of ``passages`` hold each term, and how many passages there are."""
    df: Counter[str] = Counter()
    n = 0
    for text in passages:
        df.update(terms(text))
        n += 1
    return df, n


def key_terms(passage: str, df: Mapping[str, int], n: int) -> set[str]:
    """The terms of ``passage`` held by at most ``RARE_SHARE`` of the ``n``
    passages ``df`` counts (at least one); all its terms when none is that rare."""
    mine = terms(passage)
    limit = max(1, int(n * RARE_SHARE))
    rare = {t for t in mine if df.get(t, 0) <= limit}
    return rare or mine


def names_any(answer: str, keys: set[str]) -> bool:
    """Whether ``answer`` names at least one of ``keys``."""
    return not keys or bool(terms(answer) & keys)
