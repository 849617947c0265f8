"""The ledger row schema: one definition of each row, and the bytes on disk."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.jsonl import dumps_line
from pipeline.store.schema import (
    ANSWER_FIELDS,
    FOLLOWUP_FIELDS,
    QUESTION_FIELDS,
    REQUIRED,
    Field,
    answer_row,
    followup_row,
    is_followup,
    question_row,
)


@pytest.mark.parametrize(("make", "fields"), [
    (question_row, QUESTION_FIELDS), (followup_row, FOLLOWUP_FIELDS), (answer_row, ANSWER_FIELDS),
])
def test_each_row_function_takes_its_fields_in_order_with_their_defaults(
    make: Callable[..., dict[str, Any]], fields: tuple[Field, ...]
) -> None:
    params = inspect.signature(make).parameters.values()
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields):
        assert p.kind is inspect.Parameter.KEYWORD_ONLY
        expected = inspect.Parameter.empty if f.default is REQUIRED else f.default
        assert p.default == expected, f"{f.name}: the function's default is not the schema's"
    assert all(f.meaning for f in fields), "every field says what it means"


# The lines earlier versions wrote, byte for byte: ledgers on disk must go on resuming.
QUESTION_LINE = b'{"id":"00000000000000a1","aspect":"\xe7\x94\xb2","text":"\xe9\x97\xae\\"\xe5\xbc\x95\\"","seq":7}\n'
FOLLOWUP_LINE = b'{"id":"00000000000000f2","conv":"00000000000000a1","turn":2,"text":"\xe8\xbf\xbd"}\n'
ANSWER_LINE = (b'{"conv":"00000000000000a1","turn":2,"kind":"answered","question":"q","answer":"a",'
               b'"raw_answer":" a ","refs":["r.md"],"state":"success","reason":"","server":"http://s",'
               b'"attempts":1,"seconds":1.235}\n')


def test_rows_keep_the_byte_layout_of_earlier_versions() -> None:
    assert dumps_line(question_row(id="00000000000000a1", aspect="甲", text='问"引"', seq=7)) == QUESTION_LINE
    assert dumps_line(followup_row(id="00000000000000f2", conv="00000000000000a1", turn=2, text="追")) == (
        FOLLOWUP_LINE)
    row = answer_row(conv="00000000000000a1", turn=2, kind="answered", question="q", answer="a",
                     raw_answer=" a ", refs=("r.md",), state="success", reason="", server="http://s",
                     attempts=1, seconds=1.23456)
    assert dumps_line(row) == ANSWER_LINE
    # A field added since (the backend) goes after every earlier one: the old bytes stay a prefix.
    row = answer_row(conv="00000000000000a1", turn=2, kind="answered", question="q", answer="a",
                     raw_answer=" a ", refs=("r.md",), state="success", reason="", server="http://s",
                     attempts=1, seconds=1.23456, backend="huixiangdou")
    assert dumps_line(row) == ANSWER_LINE[:-2] + b',"backend":"huixiangdou"}\n'
    row = answer_row(conv="00000000000000a1", turn=2, kind="answered", question="q", answer="a",
                     raw_answer=" a ", refs=("r.md",), state="success", reason="", server="http://s",
                     attempts=1, seconds=1.23456, backend="local", edits=("lead_in",))
    assert dumps_line(row) == ANSWER_LINE[:-2] + b',"backend":"local","edits":["lead_in"]}\n'


def test_an_answer_row_refuses_a_kind_the_schema_does_not_have() -> None:
    with pytest.raises(ValueError, match="'maybe'"):
        answer_row(conv="c", turn=1, kind="maybe", question="q", answer="", raw_answer="", refs=(),
                   state="", reason="", server="", attempts=1, seconds=0.0)


def test_an_optional_field_is_written_only_away_from_its_default_and_after_the_others() -> None:
    base = dict(conv="00000000000000a1", turn=2, kind="answered", question="q", answer="a", raw_answer=" a ",
                refs=("r.md",), state="success", reason="", server="http://s", attempts=1, seconds=1.23456)
    assert dumps_line(answer_row(**base, backend="")) == ANSWER_LINE, "at its default: not written"
    assert dumps_line(answer_row(**base, backend="local")) == ANSWER_LINE[:-2] + b',"backend":"local"}\n'
    optional = [f for f in ANSWER_FIELDS if f.default is not REQUIRED]
    assert ANSWER_FIELDS[-len(optional):] == tuple(optional), "optional fields come after every required one"


def test_a_followup_is_told_from_a_first_turn_question_by_its_conv() -> None:
    assert is_followup(followup_row(id="f", conv="c", turn=2, text="t"))
    assert not is_followup(question_row(id="c", aspect="A", text="t", seq=0))
