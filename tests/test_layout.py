"""The byte scans of ledger rows against a plain JSON parse of the same
lines: what they read must be what the rows say, and rows as the pipeline
writes them must take the scan, not the slow path."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from pipeline.jsonl import dumps_line
from pipeline.store.layout import answer_block, json_string, question_block, question_texts, turn_key
from pipeline.store.schema import ANSWER_KINDS, answer_row, followup_row, is_followup, question_row

_ODD_TEXTS = ['说"引号"', "back\\slash", "两行\n文本", "tab\there", "\u2028sep", "é", "\x00nul", "😀"]


def _text(rnd: random.Random, base: str) -> str:
    return base + (rnd.choice(_ODD_TEXTS) if rnd.random() < 0.3 else "")


def _written_questions(rnd: random.Random, n: int) -> list[dict[str, Any]]:
    """Question-ledger rows as the pipeline writes them (the schema's functions)."""
    rows: list[dict[str, Any]] = []
    for k in range(n):
        qid = f"{rnd.getrandbits(64):016x}"
        if rnd.random() < 0.2:
            rows.append(followup_row(id=f"{rnd.getrandbits(64):016x}", conv=rnd.choice([qid, "天", 'q"1']),
                                     turn=rnd.randint(2, 9), text=_text(rnd, f"追问{k}")))
        else:
            rows.append(question_row(id=qid, aspect=_text(rnd, rnd.choice("AB") + "面"),
                                     text=_text(rnd, f"问题{k}"), seq=rnd.choice([k, 0, 10**17])))
    return rows


def _odd_question(rnd: random.Random) -> dict[str, Any]:
    """A row in some other shape: the scan must leave its block to the row parser, or read it right."""
    return rnd.choice([
        {"aspect": "A", "id": "00000000000000a1", "text": "t", "seq": 1},  # another key order
        {"id": "00000000000000A1", "aspect": "A", "text": "t", "seq": 1},  # not the id form
        {"id": "00000000000000a1", "aspect": "A", "text": "t", "seq": 1.5},  # not an int
        {"id": "00000000000000a1", "aspect": "A", "text": "t", "seq": 1, "source": ["f.md", 3]},  # a later field
        {"id": "f", "conv": "c", "turn": 2, "text": "t", "backend": "local"},  # a later field
        {"id": "f", "turn": 2, "conv": "c", "text": "t"},  # another key order
    ])


def _columns(rows: list[dict[str, Any]]) -> tuple[list[bytes], list[str], list[str], list[int], list[Any]]:
    firsts = [r for r in rows if not is_followup(r)]
    return ([r["id"].encode() for r in firsts], [r["aspect"] for r in firsts], [r["text"] for r in firsts],
            [r["seq"] for r in firsts], [(r["conv"], r["turn"], r["text"]) for r in rows if is_followup(r)])


@pytest.mark.parametrize("seed", range(40))
def test_the_question_scan_reads_what_a_plain_parse_reads(seed: int) -> None:
    rnd = random.Random(seed)
    rows = _written_questions(rnd, rnd.choice([1, 5, 60]))
    data = b"".join(map(dumps_line, rows))
    block = question_block(data + b'{"id":"torn', len(data))  # only whole lines are read
    assert block is not None, "rows as written take the scan"
    assert (list(block.ids), block.aspects, [json_string(t) for t in block.texts], block.seqs,
            block.followups) == _columns(rows)
    assert question_texts(data, len(data)) == ([r["text"] for r in rows if not is_followup(r)]
                                                + [r["text"] for r in rows if is_followup(r)])
    # With rows of other shapes among them: the scan reads them right, or not at all.
    mixed = rows + [_odd_question(rnd) for _ in range(rnd.randint(1, 3))]
    rnd.shuffle(mixed)
    data = b"".join(map(dumps_line, mixed))
    parsed = [orjson.loads(line) for line in data.splitlines()]
    block = question_block(data, len(data))
    if block is not None:
        assert (list(block.ids), block.aspects, [json_string(t) for t in block.texts], block.seqs,
                block.followups) == _columns(parsed)


@pytest.mark.parametrize("line", [
    b'{"aspect":"A","id":"00000000000000a1","text":"t","seq":1}',  # another key order
    b'{"id":"00000000000000a1","aspect":"A","text":"t","seq":01}',  # not JSON
    b'{"id":"00000000000000a1","aspect":"A","text":"\xff","seq":1}',  # not UTF-8
    b'{"id":"00000000000000a1","aspect":"A","text":"\\x","seq":1}',  # a bad escape
    b'{"id":"00000000000000a1","aspect":"A","text":"t\tt","seq":1}',  # a raw control character
    b"",  # a blank line
])
def test_the_question_scan_leaves_any_other_line_to_the_row_parser(line: bytes) -> None:
    good = dumps_line(question_row(id="00000000000000b2", aspect="A", text="问", seq=0))
    data = good + line + b"\n" + good
    assert question_block(data, len(data)) is None
    assert question_block(good, len(good)) is not None


def test_fields_added_after_the_scanned_ones_keep_rows_on_the_scan() -> None:
    rows = [{**question_row(id="00000000000000a1", aspect="A", text="问", seq=3), "source": {"file": "a.md"}},
            {**followup_row(id="f1", conv="00000000000000a1", turn=2, text="追"), "backend": "local"}]
    data = b"".join(map(dumps_line, rows))
    block = question_block(data, len(data))
    assert block is not None and block.seqs == [3] and block.followups == [("00000000000000a1", 2, "追")]


def test_a_passage_question_is_read_with_its_later_fields() -> None:
    rows = [question_row(id="00000000000000a1", aspect="", text="问", seq=3, passage="p1", file="a.md", span=(0, 9)),
            question_row(id="00000000000000a2", aspect="A", text="问", seq=4)]
    data = b"".join(map(dumps_line, rows))
    block = question_block(data, len(data))
    assert block is not None and block.extras == {0: {"passage": "p1", "file": "a.md", "span": [0, 9]}}


@pytest.mark.parametrize("tail", [b',"passage":"p1",}', b',"passage":}', b',"seq":5}', b',"conv":"c"}'])
def test_later_fields_that_are_not_json_or_repeat_a_scanned_key_go_to_the_row_parser(tail: bytes) -> None:
    line = b'{"id":"00000000000000a1","aspect":"","text":"t","seq":1' + tail + b"\n"
    assert question_block(line, len(line)) is None


def _written_answers(rnd: random.Random, n: int) -> list[dict[str, Any]]:
    return [answer_row(conv=rnd.choice([f"{rnd.getrandbits(64):016x}", "x y", "ABC-1"]), turn=rnd.randint(1, 12),
                       kind=rnd.choice(ANSWER_KINDS), question=_text(rnd, "问"), answer=_text(rnd, "答"),
                       raw_answer=_text(rnd, ""), refs=["a.md"], state=_text(rnd, ""), reason="",
                       server="http://s", attempts=1, seconds=rnd.random())
            for _ in range(n)]


@pytest.mark.parametrize("seed", range(40))
def test_the_answer_scan_reads_what_a_plain_parse_reads(seed: int) -> None:
    rnd = random.Random(seed)
    rows = _written_answers(rnd, rnd.choice([1, 5, 60]))
    if rnd.random() < 0.3:
        rows = [{**r, "backend": "local"} for r in rows]  # a field added later
    data = b"".join(map(dumps_line, rows))
    scanned = answer_block(data + b'{"conv":"torn', len(data))
    assert scanned is not None, "rows as written take the scan"
    keys, lengths, kinds = scanned
    assert list(keys) == [turn_key(r["conv"], r["turn"]) for r in rows]
    assert [k.decode() for k in kinds] == [r["kind"] for r in rows]
    assert lengths == [len(dumps_line(r)) for r in rows]


@pytest.mark.parametrize("row", [
    {"conv": 'q"1', "turn": 1, "kind": "answered"},  # a conv that needs an escape
    {"conv": "天", "turn": 1, "kind": "answered"},  # a conv that is not ASCII
    {"conv": "x", "turn": 0, "kind": "answered"},  # no valid turn
    {"conv": "x", "turn": 1, "kind": "odd-kind"},  # a kind the schema does not have
    {"turn": 1, "conv": "x", "kind": "answered"},  # another key order
    {"conv": "x", "turn": 1, "answer": "a", "kind": "answered"},  # another key before the kind
])
def test_the_answer_scan_leaves_any_other_line_to_the_row_parser(row: dict[str, Any]) -> None:
    good = dumps_line({"conv": "y", "turn": 1, "kind": "answered"})
    data = good + dumps_line(row) + good
    assert answer_block(data, len(data)) is None
    assert answer_block(good, len(good)) is not None


def test_a_question_before_the_kind_is_read_as_earlier_versions_wrote_it() -> None:
    data = dumps_line({"conv": "y", "turn": 2, "question": 'a "q" \\ "kind":"vetoed"', "kind": "failed"})
    assert answer_block(data, len(data)) == ((turn_key("y", 2),), [len(data)], (b"failed",))
