"""The run report: built from prepared ledgers, and written by every QA run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.qa import run_qa
from pipeline.report import build_report, percentile, render_markdown, state_from_rows, write_report
from pipeline.settings import Settings, parse_settings
from tests.fakes.huixiangdou_server import FakeHuixiangdou
from tests.fakes.llm_fixtures import FAKE_KEY
from tests.fakes.llm_server import FakeLLM
from tests.test_qa import make_settings

SKIP = "Topics unrelated to the knowledge base. Updating good_questions and bad_questions can improve accuracy."
IRRELEVANT = "Init state (irrelevant material)"


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([7], 50, 7),
        ([7], 95, 7),
        ([1, 2, 3, 4], 50, 2),
        ([4, 3, 2, 1], 50, 2),  # order does not matter
        (list(range(1, 11)), 90, 9),
        (list(range(1, 11)), 95, 10),
        (list(range(1, 101)), 50, 50),
        ([1, 2, 3], 0, 1),
        ([1, 2, 3], 100, 3),
    ],
)
def test_percentile_by_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def settings(tmp_path: Path) -> Settings:
    return parse_settings(
        {"paths": {"out_dir": str(tmp_path / "out")},
         "questions": {"aspects": ["战斗", "剧情"], "per_aspect": 4}},
        environ={},
    )


def q(i: int, aspect: str) -> dict[str, Any]:
    return {"id": f"q{i}", "aspect": aspect, "text": f"问题{i}？", "seq": i}


def a(i: int, kind: str, *, state: str = "success", answer: str = "", reason: str = "",
      seconds: float = 1.0) -> dict[str, Any]:
    return {"conv": f"q{i}", "turn": 1, "question": f"问题{i}？", "kind": kind, "answer": answer,
            "raw_answer": answer, "refs": [], "state": state, "reason": reason, "server": "s",
            "attempts": 1, "seconds": seconds}


@pytest.fixture
def ledgers() -> dict[str, list[dict[str, Any]]]:
    questions = [q(i, "战斗") for i in range(4)] + [q(i, "剧情") for i in range(4, 7)]
    answers = [
        a(0, "answered", answer="x" * 10),
        a(1, "failed", state="Web search fail, please check network, TOKEN and quota", seconds=3.0),
        a(1, "answered", answer="x" * 40),  # the retry wins
        a(2, "skipped", state=SKIP),
        a(3, "skipped", state=SKIP),
        a(4, "skipped", state=IRRELEVANT),
        a(5, "rejected", answer="", reason="refusal", state="success"),
        a(6, "skipped", state=SKIP, seconds=0.0),
    ]
    events = [
        {"event": "run_start", "pid": 1, "time": 1_700_000_000.0},
        {"event": "run_end", "status": "quota", "stats": {"dropped": {"duplicate": 3, "too_long": 1}},
         "usage": {"prompt_tokens": 100, "completion_tokens": 50, "cost": 0.5}},
        {"event": "run_start", "pid": 2, "time": 1_700_000_100.0},
        {"event": "run_end", "status": "complete", "stats": {"dropped": {"duplicate": 2}},
         "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.25}},
    ]
    return {"questions": questions, "answers": answers, "events": events}


def test_top_no_answer_states_come_with_example_questions(tmp_path: Path, ledgers: dict[str, Any]) -> None:
    s = settings(tmp_path)
    report = build_report(s, ledgers, state_from_rows(s, ledgers))
    assert report["no_answer_states"] == [
        {"state": SKIP, "kind": "skipped", "count": 3, "examples": ["问题2？", "问题3？", "问题6？"]},
        {"state": IRRELEVANT, "kind": "skipped", "count": 1, "examples": ["问题4？"]},
    ]
    assert report["gate_rejections"] == [{"reason": "refusal", "count": 1, "examples": ["问题5？"]}]


def test_counts_follow_the_latest_attempt_of_each_turn(tmp_path: Path, ledgers: dict[str, Any]) -> None:
    s = settings(tmp_path)
    report = build_report(s, ledgers, state_from_rows(s, ledgers), conversations=2)
    assert report["outcomes"] == {"answered": 2, "skipped": 4, "vetoed": 0, "failed": 0, "rejected": 1}
    assert report["answer_rows"] == 8
    assert report["questions"] == {"accepted": 7, "target": 8}
    assert report["aspects"]["战斗"]["first_turn"]["answered"] == 2
    assert report["aspects"]["战斗"]["first_turn"]["skipped"] == 2
    assert report["aspects"]["剧情"]["questions"] == 3
    assert report["aspects"]["剧情"]["first_turn"]["rejected"] == 1
    assert report["conversations"]["in_dataset"] == 2


def test_lengths_dropped_reasons_usage_and_latency(tmp_path: Path, ledgers: dict[str, Any]) -> None:
    s = settings(tmp_path)
    report = build_report(s, ledgers, state_from_rows(s, ledgers))
    assert report["answer_chars"] == {"count": 2, "min": 10, "p50": 10, "p90": 40, "max": 40}
    assert report["dropped_questions"] == {"duplicate": 5, "too_long": 1}, "summed over runs"
    assert report["usage"] == {"calls": 0, "prompt_tokens": 110, "completion_tokens": 55, "cost": 0.75}
    # Attempts with a recorded time; the 0 s row (no request made) is left out.
    assert report["latency"]["rag_all_runs"] == {"n": 7, "p50_s": 1.0, "p95_s": 3.0}
    assert report["run"] is None


def test_run_section_has_latencies_and_throughput(tmp_path: Path, ledgers: dict[str, Any]) -> None:
    s = settings(tmp_path)
    run = {"status": "interrupted", "detail": "stopped by SIGINT", "seconds": 1800.0, "questions_new": 6,
           "stats": {"outcomes": {"answered": 10, "skipped": 5}, "dropped": {"duplicate": 2},
                     "rejected": {"too_short": 1}},
           "usage": {"calls": 4, "prompt_tokens": 9, "completion_tokens": 3, "cost": 0.01},
           "llm_seconds": [float(x) for x in range(1, 21)], "rag_seconds": [2.0, 4.0]}
    r = build_report(s, ledgers, state_from_rows(s, ledgers), run)["run"]
    assert r["latency"] == {"llm": {"n": 20, "p50_s": 10.0, "p95_s": 19.0},
                            "rag": {"n": 2, "p50_s": 2.0, "p95_s": 4.0}}
    assert (r["questions_per_hour"], r["answers_per_hour"]) == (12.0, 30.0)
    assert r["dropped"] == {"duplicate": 2} and r["status"] == "interrupted"


def test_markdown_names_states_examples_and_reasons(tmp_path: Path, ledgers: dict[str, Any]) -> None:
    s = settings(tmp_path)
    ledgers["answers"].append(a(0, "skipped", state="a | b"))  # a pipe must not break the table
    md = render_markdown(build_report(s, ledgers, state_from_rows(s, ledgers)))
    assert f"| {SKIP} | skipped | 3 | 问题2？ / 问题3？ / 问题6？ |" in md
    assert "| a \\| b | skipped | 1 | 问题0？ |" in md
    assert "| refusal | 1 | 问题5？ |" in md
    assert "duplicate 5, too_long 1" in md
    assert "| 1 | 40 | 40 | 40 | 40 |" in md, "answer length row: count, min, p50, p90, max"


def test_write_report_writes_both_files(tmp_path: Path, ledgers: dict[str, Any]) -> None:
    s = settings(tmp_path)
    report = build_report(s, ledgers, state_from_rows(s, ledgers))
    md, js = write_report(tmp_path, report)
    assert json.loads(js.read_text("utf-8")) == report
    assert md.read_text("utf-8") == render_markdown(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"], "no temp files left"


async def test_every_run_writes_a_report_even_one_that_stops_early(tmp_path: Path) -> None:
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",)) as llm, FakeHuixiangdou(seed=1) as hxd:
        llm.quota_after = 1  # one question batch, then the quota is gone
        s = make_settings(tmp_path, llm, [hxd], questions={"aspects": ["战斗系统", "主要角色"],
                                                         "per_aspect": 3, "batch_size": 3},
                          llm={"concurrency": 1})
        result = await run_qa(s, install_signals=False)
    assert result.status == "quota"
    report = json.loads((s.out_dir / "report.json").read_text("utf-8"))
    assert report["run"]["status"] == "quota"
    assert report["questions"]["accepted"] == 3
    assert report["run"]["questions_new"] == 3
    assert report["run"]["latency"]["llm"]["n"] == result.usage["calls"] == 1
    assert report["run"]["latency"]["rag"]["n"] == sum(result.stats["outcomes"].values())
    assert report["conversations"]["in_dataset"] == result.conversations
    assert "ended: **quota**" in (s.out_dir / "report.md").read_text("utf-8")
