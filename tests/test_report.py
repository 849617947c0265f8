"""The run report: built from prepared ledgers, and written by every QA run."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.outputs.answer_stats import answer_stats
from pipeline.outputs.report import build_report, percentile, render_markdown, write_report
from pipeline.qa.stage import run_qa
from pipeline.settings import Settings, parse_settings
from pipeline.store.answers import AnswerIndex, SpanReader
from pipeline.store.view import open_ledgers, state_from_ledgers, state_from_rows
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
    assert percentile(sorted(values), q) == expected


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
    assert report["outcomes"] == {"answered": 2, "skipped": 4, "vetoed": 0, "failed": 0, "refused": 0,
                                  "rejected": 1}
    assert report["answer_rows"] == 8
    assert report["questions"] == {"accepted": 7, "target": 8, "corpus": 0}
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
    assert "duplicate 5, too long 1" in md  # reasons named for a person
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


# --------------------------------------------------------------------------- streamed ledgers


def write_ledgers(folder: Path, ledgers: dict[str, list[dict[str, Any]]], answers_tail: bytes = b"") -> Path:
    state = folder / "state"
    state.mkdir(parents=True, exist_ok=True)
    for name, rows in ledgers.items():
        tail = answers_tail if name == "answers" else b""
        (state / f"{name}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows) + tail)
    return state


def test_report_from_streamed_files_equals_the_report_from_rows(tmp_path: Path, ledgers: dict[str, Any]) -> None:
    s = settings(tmp_path)
    state_dir = write_ledgers(tmp_path / "out", ledgers, answers_tail=b'{"conv": "q2", "turn": 1, "ki')
    before = (state_dir / "answers.jsonl").read_bytes()
    expected = build_report(s, ledgers, state_from_rows(s, ledgers), now=0.0)
    with open_ledgers(state_dir) as streamed:
        report = build_report(s, streamed, state_from_ledgers(s, streamed), now=0.0)
    assert report == expected, "examples read back by byte offset, torn tail skipped"
    assert (state_dir / "answers.jsonl").read_bytes() == before, "the torn tail is skipped, not cut"


def test_ties_and_examples_follow_the_ledger_order_of_latest_rows(tmp_path: Path) -> None:
    # Equal counts keep the order in which their first latest row comes in
    # the ledger, and so do the example questions of a group.
    s = settings(tmp_path)
    t2 = {**a(0, "skipped", state="X"), "turn": 2, "question": "追问0？"}
    rows = {"questions": [q(0, "战斗"), q(1, "战斗"), q(2, "战斗")],
            "answers": [a(0, "answered", answer="x" * 30), a(1, "skipped", state="Y"), t2,
                        a(2, "skipped", state="X"), {**a(1, "skipped", state="Y"), "question": "又问1？"}]}
    report = build_report(s, rows, state_from_rows(s, rows))
    assert [(g["state"], g["examples"]) for g in report["no_answer_states"]] == [
        ("X", ["追问0？", "问题2？"]), ("Y", ["又问1？"])]


def _plain_counts(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """What answer_stats counts, by hand: the latest row of each valid turn, every row's seconds."""
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in answers:
        if isinstance(r.get("conv"), str) and type(r.get("turn")) is int and r["turn"] >= 1:
            latest[(r["conv"], r["turn"])] = r
    by_kind: dict[str, int] = {}
    by_state: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    by_backend: dict[str, dict[str, int]] = {}
    for r in latest.values():
        backend = r.get("backend") if isinstance(r.get("backend"), str) else (
            "" if not isinstance(r.get("server"), str) or not r["server"]
            else "local" if r["server"] == "local" else "huixiangdou")
        if backend:
            counts = by_backend.setdefault(backend, {})
            counts[str(r.get("kind", ""))] = counts.get(str(r.get("kind", "")), 0) + 1
        kind = str(r.get("kind", ""))
        by_kind[kind] = by_kind.get(kind, 0) + 1
        by_state[str(r.get("state", ""))] = by_state.get(str(r.get("state", "")), 0) + 1
        if kind != "answered" and r.get("reason"):
            by_reason[str(r["reason"])] = by_reason.get(str(r["reason"]), 0) + 1
    return {"rows": len(answers), "by_kind": by_kind, "by_state": by_state, "by_reason": by_reason,
            "by_backend": by_backend,
            "chars": sorted(len(str(r.get("answer", ""))) for r in latest.values() if r.get("kind") == "answered"),
            "seconds": [float(r["seconds"]) for r in answers
                        if isinstance(r.get("seconds"), (int, float)) and r["seconds"] > 0]}


@pytest.mark.parametrize(
    "answers",
    [
        [],
        [a(0, "answered", answer="x"), a(1, "skipped", state="s1"), a(2, "skipped", state="s2")],
        # retries, a later turn, a row with no valid conv/turn, odd kinds and states
        [a(0, "failed", state="down", reason="x"), a(0, "answered", answer="y"),
         {**a(0, "skipped", state="s"), "turn": 2}, {"conv": "q3", "turn": 1}, {"conv": "q4", "turn": 1, "kind": None, "state": None, "reason": "r"},
         {"conv": "q7", "turn": 1, "kind": "skipped", "state": ["odd"], "reason": {"r": 1}},
         a(5, "rejected", reason="refusal"), a(6, "vetoed", state="")],
        # backends: recorded, or told by the server of rows older than the field
        [{**a(0, "answered", answer="x"), "backend": "local"}, {**a(1, "skipped"), "server": "local"},
         {**a(2, "skipped"), "server": "http://h:1"}, {**a(3, "failed"), "server": ""}],
    ],
)
def test_answer_stats_count_what_a_plain_count_of_latest_rows_says(
    tmp_path: Path, answers: list[dict[str, Any]]
) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in answers))
    expected = _plain_counts(answers)
    with AnswerIndex.of_file(path) as index:
        for stats in (answer_stats(index, top=10, examples=3),
                      answer_stats(AnswerIndex.of_rows(answers), top=10, examples=3)):
            assert {"rows": stats.rows, "by_kind": stats.by_kind, "by_state": stats.by_state,
                    "by_reason": stats.by_reason, "by_backend": stats.by_backend,
                    "chars": sorted(stats.answer_chars),
                    "seconds": list(stats.rag_seconds)} == expected
            assert list(stats.by_kind.values()) == sorted(stats.by_kind.values(), reverse=True)


def report_peak(tmp_path: Path, n: int) -> int:
    """Peak traced bytes of reading ``n`` answered questions' ledgers and building their report."""
    s = settings(tmp_path)
    text = "答" * 600
    rows = {"questions": [q(i, "战斗") for i in range(n)],
            "answers": [{**a(i, "answered", answer=text), "raw_answer": text} for i in range(n)]}
    state_dir = write_ledgers(tmp_path / f"out{n}", rows)
    del rows
    tracemalloc.start()
    try:
        with open_ledgers(state_dir) as ledgers:
            build_report(s, ledgers, state_from_ledgers(s, ledgers))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_report_holds_no_answer_rows(tmp_path: Path) -> None:
    # Rows of 600-character answers take ~3 KB each as dicts; the streamed
    # report keeps an index entry per turn and a float per row. Growth between
    # two sizes leaves out the fixed cost (the read block).
    small, large = 3000, 6000
    growth = (report_peak(tmp_path, large) - report_peak(tmp_path, small)) / (large - small)
    assert growth < 1024, f"{growth:.0f} B per answered question while building the report"


def test_the_dataset_lookup_reads_back_only_answered_turns() -> None:
    # The dataset stops a conversation at its first turn not answered; the
    # index knows each turn's kind, so such a turn costs no read.
    reads: list[int] = []

    class Counting(list):  # type: ignore[type-arg]
        def __getitem__(self, i: Any) -> Any:
            reads.append(i)
            return super().__getitem__(i)

    rows = Counting([a(0, "answered", answer="甲"), a(1, "skipped", state="s"), a(2, "failed"), a(3, "rejected")])
    index = AnswerIndex.of_rows(rows)
    assert index.answered_row("q0", 1) == rows[0]
    reads.clear()
    assert [index.answered_row(f"q{i}", 1) for i in (1, 2, 3)] == [None, None, None]
    assert index.answered_row("q0", 2) is None and index.answered_row("q9", 1) is None
    assert reads == []


def test_span_reader_serves_spans_in_any_order_from_few_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    data = bytes(range(256)) * 1024  # 256 KiB
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    reads: list[int] = []
    real_pread = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        reads.append(offset)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting)
    # In file order with jitter, then across a window's end, a span bigger than
    # a window, the file's end, and back to the start.
    spans = [(o, 300) for o in range(0, 200_000, 997)]
    spans += [(65_500, 100), (70_000, 5), (131_000, 70_000), (262_000, 144), (10, 1)]
    with open(path, "rb") as fh:
        reader = SpanReader(fh.fileno())
        for offset, length in spans:
            assert reader.read(offset, length) == data[offset : offset + length]
    assert len(reads) < len(spans) / 20, "spans in file order share a window read"
