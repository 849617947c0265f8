"""The answer index: the latest row of every turn, whatever the rows look like
on disk, the same from a file as from a plain parse of it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.errors import InputError
from pipeline.store.answers import AnswerIndex
from pipeline.store.schema import ANSWER_KINDS, answer_row


def _row(conv: Any, turn: Any, kind: Any, question: str = "问？", *, written: bool = True) -> dict[str, Any]:
    """An answer row as the pipeline writes it, or (``written=False``) with
    the question before the kind, as earlier versions wrote it."""
    if written and kind in ANSWER_KINDS and isinstance(conv, str) and type(turn) is int:
        return answer_row(conv=conv, turn=turn, kind=kind, question=question, answer="答", raw_answer="答",
                          refs=(), state="", reason="", server="s", attempts=1, seconds=0.2)
    return {"conv": conv, "turn": turn, "question": question, "kind": kind, "answer": "答"}


_CONVS = [f"{i:016x}" for i in (1, 2, 0xABCDEF)] + ["天", "x", 'q"1', "back\\slash", "ABCDEF0123456789"]
_QUESTIONS = ["问一", 'a "q" \\', "两\n行", '"kind":"vetoed" inside', "\u2028"]


def _random_rows(rnd: random.Random, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        conv, turn = rnd.choice(_CONVS), rnd.choice([1, 1, 1, 2, 3, 300])
        kind = rnd.choice([*ANSWER_KINDS, "answered", "answered", "failed", "odd-kind"])
        row = _row(conv, turn, kind, rnd.choice(_QUESTIONS), written=rnd.random() < 0.7)
        r = rnd.random()
        if r < 0.03:
            row = {"turn": turn, **row}  # another key order
        elif r < 0.06:
            row = {**row, "kind": rnd.choice([None, 3, ["answered"]])}  # a kind that is no string
        elif r < 0.08:
            row = {**row, "backend": "local", "extra": {"n": [1, 2]}}  # fields added later
        rows.append(row)
    return rows


def _expected(rows: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[str, int, dict[str, Any]]]:
    """The index by hand, from a plain parse: (kind, failed rows, row) of each turn's latest row."""
    out: dict[tuple[str, int], tuple[str, int, dict[str, Any]]] = {}
    for row in rows:
        conv, turn = row.get("conv"), row.get("turn")
        if not isinstance(conv, str) or type(turn) is not int or turn < 1:
            continue
        kind = row.get("kind") if isinstance(row.get("kind"), str) else ""
        failed = out.get((conv, turn), ("", 0, {}))[1] + (kind == "failed")
        out[(conv, turn)] = (kind, failed, row)
    return out


def _write(path: Path, rows: list[dict[str, Any]], rnd: random.Random) -> bytes:
    data = b"".join(orjson.dumps(r) + (b"\n\n" if rnd.random() < 0.02 else b"\n") for r in rows)
    path.write_bytes(data)
    return data


def _check(index: AnswerIndex, rows: list[dict[str, Any]]) -> None:
    expected = _expected(rows)
    for (conv, turn), (kind, failed, row) in expected.items():
        got = index.turn(conv, turn)
        assert got is not None and got[:2] == (kind, failed), (conv, turn)
        assert index.read(got[2]) == row
        assert index.answered([conv.encode()], turn) == [kind == "answered"]
        assert index.answered_row(conv, turn) == (row if kind == "answered" else None)
    for conv in _CONVS:
        for turn in (1, 2, 3, 4, 300):
            if (conv, turn) not in expected:
                assert index.turn(conv, turn) is None and index.answered_row(conv, turn) is None
                assert index.answered([conv.encode()], turn) == [False]
    latest = [row for row, _, is_latest in index.rows() if is_latest]
    assert [row for row, _, _ in index.rows()] == rows, "every row again, in order"
    assert sorted(map(orjson.dumps, latest)) == sorted(orjson.dumps(r) for _, _, r in expected.values())


@pytest.mark.parametrize("seed", range(40))
def test_the_index_of_a_file_is_the_index_of_its_rows_parsed_plainly(tmp_path: Path, seed: int) -> None:
    # Blocks of the form written are scanned as bytes, others parsed row by
    # row: the answers must not depend on which, nor on where blocks break.
    rnd = random.Random(seed)
    rows = _random_rows(rnd, rnd.choice([0, 1, 20, 300]))
    path = tmp_path / "answers.jsonl"
    _write(path, rows, rnd)
    with AnswerIndex.of_file(path, repair=rnd.random() < 0.5, block_size=rnd.choice([64, 500, 1 << 20])) as index:
        _check(index, rows)
    _check(AnswerIndex.of_rows(rows), rows)


@pytest.mark.parametrize("block_size", [64, 1 << 20])
def test_read_only_skips_a_torn_tail_and_repairing_cuts_it(tmp_path: Path, block_size: int) -> None:
    rnd = random.Random(block_size)
    rows = _random_rows(rnd, 50)
    path = tmp_path / "answers.jsonl"
    data = _write(path, rows, rnd) + b'{"conv":"00000000000000ff","turn":1,"kind":"answ\n{"co'
    path.write_bytes(data)
    with AnswerIndex.of_file(path, repair=False, block_size=block_size) as index:
        _check(index, rows)
    assert path.read_bytes() == data, "read-only: nothing cut"
    with AnswerIndex.of_file(path, block_size=block_size) as index:
        _check(index, rows)
    assert path.read_bytes() == data[: data.index(b'{"conv":"00000000000000ff"')]


@pytest.mark.parametrize("repair", [False, True])
def test_a_bad_line_in_the_middle_is_named(tmp_path: Path, repair: bool) -> None:
    lines = [orjson.dumps(_row(f"{i:016x}", 1, "answered")) for i in range(20)]
    lines[11] = b'{"conv":"torn'
    path = tmp_path / "answers.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InputError, match=r"line 12 \(byte offset "):
        AnswerIndex.of_file(path, repair=repair, block_size=100)


@pytest.mark.parametrize("row", [{}, {"conv": "y", "turn": 0, "kind": "answered"}, {"conv": 7, "turn": 1},
                                 {"conv": "y", "turn": "1"}, {"conv": "y", "turn": True}])
@pytest.mark.parametrize("repair", [False, True])
def test_an_answer_row_of_no_turn_is_named_as_damage(tmp_path: Path, row: dict[str, Any], repair: bool) -> None:
    good = orjson.dumps(_row("00000000000000ab", 1, "answered")) + b"\n"
    path = tmp_path / "answers.jsonl"
    path.write_bytes(good + orjson.dumps(row) + b"\n" + good)
    with pytest.raises(InputError, match=r"line 2 \(byte offset \d+\) is an answer row without a string 'conv'"):
        AnswerIndex.of_file(path, repair=repair)
    assert AnswerIndex.of_rows([row]).turn("y", 1) is None, "rows in memory: left out"


def test_a_missing_ledger_is_an_empty_index(tmp_path: Path) -> None:
    with AnswerIndex.of_file(tmp_path / "answers.jsonl") as index:
        assert index.turn("x", 1) is None and list(index.rows()) == []
    assert not (tmp_path / "answers.jsonl").exists()
