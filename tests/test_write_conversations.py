"""conversations.jsonl from the ledgers on disk (an offset index, rows read
back lazily) is exactly what the in-memory transform makes of the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.qa.stage import write_conversations
from pipeline.settings import Settings, parse_settings
from pipeline.store.resume import ledger_paths
from tests.test_dataset import build_conversations


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
    "ids that are not hex": (
        [_q("天", 0), _q("x-1", 1)],
        [_a("天", 1, answer="悟空"), _a("x-1", 1)],
    ),
    "no answers at all": ([_q(HEX[0], 0)], []),
}


def _settings(tmp_path: Path) -> Settings:
    return parse_settings({"paths": {"data_dir": str(tmp_path), "out_dir": str(tmp_path / "out")},
                           "questions": {"aspects": ["a"]},
                           "conversations": {"system_prompt": "S", "min_turns": 1, "max_turns": 5}},
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


# --------------------------------------------------------------------------- the run's end


def _row(conv: str, turn: int, kind: str, *, answer: str = "", state: str = "success", reason: str = "",
         seconds: float = 0.5) -> dict[str, Any]:
    """An answer row laid out as pipeline.qa.graph writes it."""
    return {"conv": conv, "turn": turn, "kind": kind, "question": f"{conv}/{turn}？\n\"引号\"",
            "answer": answer, "raw_answer": answer or "原答", "refs": ["a.md"], "state": state,
            "reason": reason, "server": "http://127.0.0.1:1", "attempts": 1, "seconds": seconds}


END_QUESTIONS = [
    *(_q(h, i) for i, h in enumerate(HEX)),
    {"id": "f" * 16, "conv": HEX[0], "turn": 2, "text": "追问？"},  # a follow-up: not a conversation of its own
    _q("天", 7), _q("x-1", 4),
]
END_ANSWERS = [
    _row(HEX[0], 1, "answered", answer="答一\n第二行", seconds=1.5),
    _row(HEX[1], 1, "failed", state="timeout", seconds=30.0),
    _row(HEX[0], 2, "answered", answer="答二"),
    _row(HEX[1], 1, "failed", state="timeout"),
    _row(HEX[2], 1, "rejected", answer="", reason="too_short"),
    _row(HEX[3], 1, "vetoed", state="secure_reject"),
    _row(HEX[1], 1, "answered", answer="终于答了"),  # the retry wins
    _row(HEX[0], 3, "skipped", state="no_doc"),  # ends the conversation after two turns
    _row("天", 1, "answered", answer="悟空"),
    _row("x-1", 1, "skipped", state="no_doc", seconds=0.0),
    {**_row(HEX[2], 2, "answered", answer="没有第一轮就不算"), "state": None},
]
RUN = {"status": "complete", "detail": "", "seconds": 2.0, "questions_new": 6,
       "stats": {"outcomes": {"answered": 4}}, "usage": {}, "llm_seconds": [0.5], "rag_seconds": [0.3]}


@pytest.mark.parametrize("max_turns", [1, 3])
def test_end_of_run_from_one_pass_equals_the_in_memory_outputs(tmp_path: Path, max_turns: int) -> None:
    # The run's end opens the ledgers once: the dataset is written from the
    # answer index, then the report is built from the same index. Both must be
    # what the same transforms make of the rows in memory, byte for byte.
    from pipeline.outputs.dataset import write_dataset
    from pipeline.jsonl import dumps_line
    from pipeline.outputs.report import build_report, render_markdown
    from pipeline.store.view import open_ledgers, state_from_ledgers, state_from_rows

    settings = parse_settings({"paths": {"data_dir": str(tmp_path), "out_dir": str(tmp_path / "out")},
                               "questions": {"aspects": ["a"], "per_aspect": 8},
                               "conversations": {"system_prompt": "S", "min_turns": 1, "max_turns": max_turns}},
                              environ={})
    settings.state_dir.mkdir(parents=True)
    paths = ledger_paths(settings.state_dir)
    paths["questions"].write_bytes(b"".join(map(dumps_line, END_QUESTIONS)))
    paths["answers"].write_bytes(b"".join(map(dumps_line, END_ANSWERS)))
    paths["events"].write_bytes(dumps_line({"event": "run_start", "time": 0.0}))

    with open_ledgers(settings.state_dir) as ledgers:
        count = write_conversations(settings, ledgers)
        report = build_report(settings, ledgers, state_from_ledgers(settings, ledgers), RUN,
                              conversations=count, now=0.0)

    first_turns = [r for r in END_QUESTIONS if "conv" not in r]
    expected_path = tmp_path / "expected.jsonl"
    expected_count = write_dataset(expected_path, build_conversations(first_turns, END_ANSWERS, "S", 1, max_turns))
    rows = {"questions": END_QUESTIONS, "answers": END_ANSWERS, "events": [{"event": "run_start", "time": 0.0}]}
    expected = build_report(settings, rows, state_from_rows(settings, rows), RUN,
                            conversations=expected_count, now=0.0)
    assert count == expected_count == 3
    assert (settings.out_dir / "conversations.jsonl").read_bytes() == expected_path.read_bytes()
    assert report == expected
    assert render_markdown(report) == render_markdown(expected)
    assert report["outcomes"] == {"answered": 5, "skipped": 2, "vetoed": 1, "failed": 0, "refused": 0,
                                  "rejected": 1}
