"""Invisible and control characters: what becomes of each, and what is counted."""

from __future__ import annotations

import pytest

from pipeline.cleantext import clean_text


@pytest.mark.parametrize(
    ("text", "cleaned", "counts"),
    [
        # Two files joined by `cat`, each with a BOM: the second BOM sits mid-text.
        ("第一章。\n\ufeff第二章。", "第一章。\n第二章。", {"bom": 1}),
        ("天命\u200b人", "天命人", {"zero_width": 1}),
        ("word\u2060joiner", "wordjoiner", {"zero_width": 1}),
        ("hy\u00adphen\u00adated", "hyphenated", {"soft_hyphen": 2}),
        ("\u202egnirts\u202c \u200eLRM\u200f \u2066iso\u2069 \u061c", "gnirts LRM iso ", {"bidi": 7}),
        ("line\u2028next\u2029para\x85nel", "line\nnext\n\npara\nnel", {"line_separator": 3}),
        # pdftotext puts a form feed at every page break.
        ("page one\n\x0cpage two\x0bx", "page one\n\npage two\nx", {"page_break": 2}),
        ("\x1b[1;31mred\x1b[0m and \x1bM reset", "red and  reset", {"control": 3}),
        ("nul\x00 bell\x07 del\x7f c1\x9b", "nul bell del c1", {"control": 4}),
    ],
    ids=["bom-mid-text", "zwsp", "word-joiner", "soft-hyphen", "bidi", "line-separators",
         "page-breaks", "ansi-escapes", "c0-c1-controls"],
)
def test_invisible_and_control_characters_are_normalised_and_counted(
    text: str, cleaned: str, counts: dict[str, int]
) -> None:
    assert clean_text(text) == (cleaned, counts)


@pytest.mark.parametrize(
    "text",
    [
        "no-break\xa0space stays",  # U+00A0 is a real space
        "tab\tcr\r\nnewline\n",
        "می\u200cخواهم",  # ZWNJ spells Persian words
        "👨\u200d👩\u200d👧",  # ZWJ builds emoji sequences
        "《黑神话：悟空》\u3000全角空格",
        "",
    ],
    ids=["nbsp", "whitespace", "zwnj", "zwj", "cjk", "empty"],
)
def test_meaningful_characters_are_kept_and_nothing_is_counted(text: str) -> None:
    assert clean_text(text) == (text, {})
