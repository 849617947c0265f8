"""conversations.jsonl from the ledgers on disk (an offset index, rows read
back lazily) is exactly what the in-memory transform makes of the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.dataset import build_conversations
from pipeline.qa import write_conversations
from pipeline.settings import Settings, parse_settings
from pipeline.state import ledger_paths


def _q(conv: str, seq: int) -> dict[str, Any]:
    return {"id": conv, "aspect": "a", "text": f"{conv} 是什么？", "seq": seq}


def _a(conv: str, turn: int, kind: str = "answered", answer: str = "答") -> dict[str, Any]:
    return {"conv": conv, "turn": turn, "question": f"{conv}/{turn}？", "kind": kind, "answer": answer}


HEX = [f"{i:016x}" for i in (0xABC, 0xDEF, 0x123, 0x456)]

CASES = {
    "retried turn: the latest row wins": (
        [_q(HEX[0], 0), _q(HEX[1], 1)],
        [_a(HEX[0], 1, "failed", ""), _a(HEX[1], 1), _a(HEX[0], 1, answer="后来答了")],
    ),
    "multi-turn stops at the first unanswered turn": (
        [_q(HEX[0], 0), _q(HEX[1], 1)],
        [_a(HEX[0], 1), _a(HEX[0], 2), _a(HEX[1], 1), _a(HEX[1], 2, "vetoed"), _a(HEX[1], 3)],
    ),
    "question order by seq, not file order; unanswered left out": (
        [_q(HEX[2], 5), _q(HEX[0], 2), _q(HEX[3], 9)],
        [_a(HEX[0], 1), _a(HEX[2], 1, answer="二")],
    ),
    "ids that are not hex, and rows without conv/turn": (
        [_q("天", 0), _q("x-1", 1)],
        [_a("天", 1, answer="悟空"), {"kind": "answered"}, _a("x-1", 1), {"conv": "x-1", "turn": 0}],
    ),
    "no answers at all": ([_q(HEX[0], 0)], []),
}


def _settings(tmp_path: Path) -> Settings:
    return parse_settings({"paths": {"data_dir": str(tmp_path), "out_dir": str(tmp_path / "out")},
                           "conversations": {"system_prompt": "S", "min_turns": 1}},
                          environ={})


@pytest.mark.parametrize("case", sorted(CASES))
def test_written_dataset_equals_the_in_memory_build(tmp_path: Path, case: str) -> None:
    questions, answers = CASES[case]
    settings = _settings(tmp_path)
    settings.state_dir.mkdir(parents=True)
    paths = ledger_paths(settings.state_dir)
    paths["questions"].write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in questions))
    if answers:
        paths["answers"].write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in answers))

    count = write_conversations(settings)

    expected = list(build_conversations(questions, answers, "S", 1))
    written = [orjson.loads(line) for line in (settings.out_dir / "conversations.jsonl").read_bytes().splitlines()]
    assert written == expected and count == len(expected)
