"""The resume plan derived from ledger rows."""

from __future__ import annotations

import random
from pathlib import Path
import json
from typing import Any

import orjson
import pytest

from pipeline.qa.stage import earlier_questions, load_state
from pipeline.settings import parse_settings
from pipeline.store.resume import SAMPLE, aspects_given_up, derive_state, ledger_paths, target_turns

# The equivalence tests' settings name every aspect their ledgers use; what the
# settings leave out has its own test.
ASPECTS = ["A", "B", "C", "D"]


def q(id_: str, aspect: str, seq: int) -> dict[str, Any]:
    return {"id": id_, "aspect": aspect, "text": f"{id_}是什么？", "seq": seq}


def a(conv: str, turn: int, kind: str, question: str = "", answer: str = "") -> dict[str, Any]:
    return {"conv": conv, "turn": turn, "question": question or f"{conv}-{turn}?", "kind": kind,
            "answer": answer or (f"answer {conv}-{turn}" if kind == "answered" else ""), "state": ""}


def derive(questions: list[dict[str, Any]], answers: list[dict[str, Any]], events: list[dict[str, Any]] = (),  # type: ignore[assignment]
           *, min_turns: int = 1, max_turns: int = 1, attempts: int = 3,
           aspects: list[str] = ["A", "B"]):  # type: ignore[no-untyped-def]  # noqa: B006
    return derive_state(questions, answers, list(events), aspects=aspects, min_turns=min_turns,
                        max_turns=max_turns, max_answer_attempts=attempts)


def test_unanswered_questions_are_pending_in_seq_order() -> None:
    s = derive([q("x", "A", 1), q("y", "B", 0), q("z", "A", 2)], [a("x", 1, "answered")])
    assert [p.conv for p in s.pending] == ["y", "z"]
    assert s.accepted == {"A": 2, "B": 1}
    assert s.recent == {"A": ["x是什么？", "z是什么？"], "B": ["y是什么？"]}
    assert s.finished == 1 and s.next_seq == 3
    assert s.pending[0].next_question == "y是什么？" and s.pending[0].next_turn == 1


def test_the_plan_counts_every_accepted_question_and_keeps_the_newest_few() -> None:
    questions = [q(f"{k}", "A" if k % 3 else "B", k) for k in range(3 * SAMPLE)]
    s = derive(questions, [])
    assert s.accepted == {"A": 2 * SAMPLE, "B": SAMPLE} and s.total_questions() == 3 * SAMPLE
    assert s.recent["A"] == [r["text"] for r in questions if r["aspect"] == "A"][-SAMPLE:]
    assert s.recent["B"] == [r["text"] for r in questions if r["aspect"] == "B"]


@pytest.mark.parametrize("kind", ["skipped", "vetoed", "rejected"])
def test_verdicts_end_a_conversation_and_are_not_asked_again(kind: str) -> None:
    s = derive([q("x", "A", 0)], [a("x", 1, kind)])
    assert s.pending == [] and s.finished == 1


def test_failed_turn_is_retried_until_the_attempt_limit() -> None:
    s = derive([q("x", "A", 0)], [a("x", 1, "failed"), a("x", 1, "failed")], attempts=3)
    assert [p.conv for p in s.pending] == ["x"] and s.pending[0].next_turn == 1
    s = derive([q("x", "A", 0)], [a("x", 1, "failed")] * 3, attempts=3)
    assert s.pending == [] and s.gave_up == 1


def test_latest_row_of_a_turn_wins() -> None:
    s = derive([q("x", "A", 0)], [a("x", 1, "failed"), a("x", 1, "answered")])
    assert s.pending == [] and s.finished == 1


def test_multi_turn_resumes_at_the_next_turn_with_history_and_paid_followup() -> None:
    conv = next(c for c in (f"c{i}" for i in range(100)) if target_turns(c, 2, 4) == 3)
    questions = [q(conv, "A", 0), {"id": "f2", "conv": conv, "turn": 2, "text": "追问二？"},
                 {"id": "f3", "conv": conv, "turn": 3, "text": "追问三？"}]
    answers = [a(conv, 1, "answered", "Q1", "A1"), a(conv, 2, "answered", "追问二？", "A2")]
    s = derive(questions, answers, min_turns=2, max_turns=4)
    (plan,) = s.pending
    assert plan.target == 3 and plan.next_turn == 3
    assert plan.history == [("Q1", "A1"), ("追问二？", "A2")]
    assert plan.next_question == "追问三？"  # written before the crash: not paid for again


def test_followup_not_yet_written_leaves_next_question_empty() -> None:
    conv = next(c for c in (f"c{i}" for i in range(100)) if target_turns(c, 2, 2) == 2)
    s = derive([q(conv, "A", 0)], [a(conv, 1, "answered")], min_turns=2, max_turns=2)
    assert s.pending[0].next_turn == 2 and s.pending[0].next_question is None


def test_complete_multi_turn_conversation_is_finished() -> None:
    s = derive([q("x", "A", 0)], [a("x", 1, "answered"), a("x", 2, "answered")], min_turns=2, max_turns=2)
    assert s.pending == [] and s.finished == 1


@pytest.mark.parametrize("conv", ["a", "b", "c", "dddd", "问题"])
def test_target_turns_is_stable_and_in_range(conv: str) -> None:
    t = target_turns(conv, 2, 4)
    assert 2 <= t <= 4 and t == target_turns(conv, 2, 4)


def test_target_turns_uses_the_whole_range() -> None:
    assert {target_turns(f"q{i}", 2, 4) for i in range(200)} == {2, 3, 4}


def test_events_give_last_run_exhausted_aspects_and_summed_usage() -> None:
    events = [
        {"event": "run_start", "pid": 1},
        {"event": "usage", "usage": {"prompt_tokens": 10}},
        {"event": "aspect_exhausted", "aspect": "B", "why": "saturated", "per_aspect": 5, "max_stale_rounds": 3},
        {"event": "aspect_exhausted", "aspect": "C", "why": "unusable", "per_aspect": 5, "max_stale_rounds": 3},
        {"event": "run_end", "status": "quota", "time": 9.0, "usage": {"prompt_tokens": 30}},
        {"event": "run_start", "pid": 2},
        {"event": "usage", "usage": {"prompt_tokens": 5}},
    ]
    s = derive([], [], events)
    assert s.exhausted == {"B"}
    assert s.given_up == {"B": "saturated", "C": "unusable"}
    assert s.last_run is not None and s.last_run["pid"] == 2
    assert s.last_run["status"] == "running or crashed"
    assert s.usage == {"prompt_tokens": 35.0}


def test_a_finished_run_keeps_its_start_time_and_records_its_end() -> None:
    events = [{"event": "run_start", "time": 100.0}, {"event": "run_end", "status": "complete", "time": 160.0}]
    s = derive([], [], events)
    assert s.last_run is not None
    assert (s.last_run["time"], s.last_run["ended"], s.last_run["status"]) == (100.0, 160.0, "complete")


# ---- load_state: the same plan streamed from the files as derived from rows in memory


def _conv_with_target(n: int, lo: int, hi: int) -> str:
    return next(c for c in (f"{i:016x}" for i in range(1000)) if target_turns(c, lo, hi) == n)


def _load_cases() -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], int, int]]:
    c3 = _conv_with_target(3, 2, 4)
    c2 = _conv_with_target(2, 2, 4)
    return {
        "single turn: answered, failed, verdicts, unasked, non-hex ids": (
            [q("0000000000000001", "A", 3), q("0000000000000002", "B", 1), q("天", "A", 0), q("x", "B", 2),
             q("0000000000000003", "A", 4)],
            [a("0000000000000001", 1, "failed"), a("天", 1, "answered"), a("0000000000000001", 1, "failed"),
             a("x", 1, "vetoed"), a("0000000000000003", 1, "failed", question="")] + [a("0000000000000002", 1, "failed")] * 3,
            1, 1,
        ),
        "multi turn: history read back, follow-up written after, retried follow-up": (
            [q(c3, "A", 0), q(c2, "B", 1),
             {"id": "f2", "conv": c3, "turn": 2, "text": "追问二？"},
             {"id": "f3", "conv": c3, "turn": 3, "text": "追问三？"},
             {"id": "g2", "conv": c2, "turn": 2, "text": "再问？"}],
            [a(c3, 1, "answered", "Q1", "A1"), a(c3, 2, "answered", "追问二？", "A2"),
             a(c2, 1, "answered", "问\"一\"\\n", "答一"), a(c2, 2, "failed", "再问？")],
            2, 4,
        ),
    }


@pytest.mark.parametrize("case", sorted(_load_cases()))
def test_load_state_from_the_files_equals_derive_state_of_the_rows(tmp_path: Path, case: str) -> None:
    questions, answers, lo, hi = _load_cases()[case]
    events = [{"event": "run_start", "time": 1.0}, {"event": "aspect_exhausted", "aspect": "B"}]
    settings = parse_settings({"paths": {"data_dir": str(tmp_path), "out_dir": str(tmp_path / "out")},
                               "questions": {"aspects": ASPECTS},
                               "conversations": {"min_turns": lo, "max_turns": hi},
                               "run": {"max_answer_attempts": 3}}, environ={})
    settings.state_dir.mkdir(parents=True)
    for name, rows in ledger_paths(settings.state_dir).items():
        data = {"questions": questions, "answers": answers, "events": events}[name]
        rows.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in data))
    loaded = load_state(settings, repair=True)
    expected = derive(questions, answers, events, min_turns=lo, max_turns=hi, attempts=3, aspects=ASPECTS)
    assert loaded == expected
    assert loaded.pending, "the case has conversations to resume"


# ---- load_state on random ledgers: the raw-byte scans and the row parser agree with derive_state

_KINDS = ["answered", "answered", "answered", "failed", "failed", "vetoed", "skipped", "rejected", "odd-kind"]
_ODD_TEXTS = ['说"引号"', "back\\slash", "两行\n文本", "tab\there", "\u2028sep", "é"]


def _random_ledgers(rnd: random.Random, lo: int, hi: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """First-turn questions, follow-ups and answer rows in the shapes the
    pipeline writes (graph order, bench order) and in others (other key
    orders, odd ids, escapes), several attempts per turn, shuffled."""
    questions: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    for k in range(rnd.randint(0, 40)):
        conv = rnd.choice([f"{rnd.getrandbits(64):016x}"] * 6 + ["天", f"x{k}", f'q"{k}', f"ABCDEF{k:010d}"])
        text = f"问题{k}" + (rnd.choice(_ODD_TEXTS) if rnd.random() < 0.15 else "")
        first = {"id": conv, "aspect": rnd.choice("AABC"), "text": text, "seq": rnd.choice([k, k, 0, 7])}
        if rnd.random() < 0.1:
            first = {"seq": first["seq"], "id": conv, "text": text, "aspect": first["aspect"]}  # other order
        elif rnd.random() < 0.15:  # a question of a corpus passage: fields after the usual ones
            first = {**first, "aspect": "", "passage": f"p{k % 3}", "file": "a.md", "span": [k, k + 9]}
        questions.append(first)
        for turn in range(1, hi + 2):
            if turn > 1 and rnd.random() < 0.7:
                questions.append({"id": f"f{k}-{turn}", "conv": conv, "turn": turn,
                                  "text": f"追问{turn}" + (rnd.choice(_ODD_TEXTS) if rnd.random() < 0.2 else "")})
            for _ in range(rnd.choice([0, 1, 1, 1, 2, 3])):
                kind = rnd.choice(_KINDS)
                row: dict[str, Any] = {"conv": conv, "turn": turn}
                question = rnd.choice([text, f"q{turn}", "", '带"引号"的问题'])
                if rnd.random() < 0.5:
                    row.update(kind=kind, question=question)  # graph order
                else:
                    row.update(question=question, kind=kind)  # bench order
                row.update(answer=f"答{k}-{turn}\n" if kind == "answered" else "", state="", seconds=0.1)
                if rnd.random() < 0.05:
                    row = {"turn": turn, **row}  # another key order
                answers.append(row)
            if rnd.random() < 0.3:
                break
    rnd.shuffle(answers)
    # Follow-ups come after their conversation's first turn, anywhere later.
    rnd.shuffle(questions)
    questions.sort(key=lambda r: "conv" in r)
    return questions, answers


@pytest.mark.parametrize("seed", range(60))
def test_load_state_on_random_ledgers_equals_derive_state(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    lo, hi = rnd.choice([(1, 1), (1, 1), (2, 2), (1, 3), (2, 4)])
    questions, answers = _random_ledgers(rnd, lo, hi)
    events = [{"event": "run_start", "time": 1.0}]
    settings = parse_settings({"paths": {"data_dir": str(tmp_path), "out_dir": str(tmp_path / "out")},
                               "questions": {"aspects": ASPECTS},
                               "conversations": {"min_turns": lo, "max_turns": hi},
                               "run": {"max_answer_attempts": rnd.choice([1, 2, 3])}}, environ={})
    settings.state_dir.mkdir(parents=True)
    for name, path in ledger_paths(settings.state_dir).items():
        rows = {"questions": questions, "answers": answers, "events": events}[name]
        data = b"".join(orjson.dumps(r) + (b"\n\n" if rnd.random() < 0.02 else b"\n") for r in rows)
        torn = rnd.choice([b"", b"", b'{"conv":"', b'{"id":"0123'])  # a torn last line is cut
        path.write_bytes(data + torn)
    loaded = load_state(settings, repair=rnd.random() < 0.5, block_size=rnd.choice([64, 300, 1 << 20]))
    expected = derive_state(questions, answers, events, aspects=ASPECTS, min_turns=lo, max_turns=hi,
                            max_answer_attempts=settings.run.max_answer_attempts)
    assert loaded == expected


def _write_ledgers(settings: Any, questions: list[dict[str, Any]], answers: list[dict[str, Any]]) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    for name, path in ledger_paths(settings.state_dir).items():
        rows = {"questions": questions, "answers": answers, "events": []}[name]
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def _skewed_questions(rnd: random.Random, n: int) -> list[dict[str, Any]]:
    """First turns of aspects written at very different rates, some with
    escapes or in another key order, and follow-ups between them."""
    weights = [rnd.choice([1, 5, 50]) for _ in "ABCD"]
    rows: list[dict[str, Any]] = []
    for k in range(n):
        text = f"问题{k}" + (rnd.choice(_ODD_TEXTS) if rnd.random() < 0.05 else "")
        row = {"id": f"{k:016x}", "aspect": rnd.choices("ABCD", weights)[0], "text": text, "seq": k}
        rows.append(row if rnd.random() > 0.02 else {"seq": k, **row})
        if rnd.random() < 0.05:
            rows.append({"id": f"f{k}", "conv": f"{k:016x}", "turn": 2, "text": f"追问{k}"})
    return rows


@pytest.mark.parametrize("seed", range(12))
def test_load_state_keeps_the_same_newest_questions_as_derive_state(tmp_path: Path, seed: int) -> None:
    # Blocks of one to hundreds of rows, aspects from most rows to few: the
    # samples are taken a block later, where the next block leaves them short.
    rnd = random.Random(seed)
    questions = _skewed_questions(rnd, rnd.choice([30, 300, 1500]))
    answers = [a(r["id"], 1, "answered") for r in questions if "conv" not in r and rnd.random() < 0.9]
    settings = parse_settings({"paths": {"data_dir": str(tmp_path), "out_dir": str(tmp_path / "out")},
                               "questions": {"aspects": ASPECTS}}, environ={})
    _write_ledgers(settings, questions, answers)
    loaded = load_state(settings, repair=True, block_size=rnd.choice([64, 300, 4096, 1 << 20]))
    expected = derive(questions, answers, aspects=ASPECTS)
    assert loaded == expected
    assert loaded.recent == expected.recent and loaded.accepted == expected.accepted


@pytest.mark.parametrize("block_size", [64, 300, 1 << 20])
def test_earlier_questions_are_the_questions_the_plan_read_and_no_later_row(
    tmp_path: Path, block_size: int
) -> None:
    questions = _skewed_questions(random.Random(block_size), 200)
    settings = parse_settings({"paths": {"data_dir": str(tmp_path), "out_dir": str(tmp_path / "out")},
                               "questions": {"aspects": ASPECTS}}, environ={})
    _write_ledgers(settings, questions, [])
    state = load_state(settings, repair=True)
    path = ledger_paths(settings.state_dir)["questions"]
    with open(path, "ab") as f:  # what the resumed run writes meanwhile, the last row half written
        f.write(orjson.dumps(q("00000000000000ff", "A", 999)) + b'\n{"id":"00000000000001')
    texts = [t for chunk in earlier_questions(path, state.questions_read, block_size=block_size) for t in chunk]
    # Per block, first turns then follow-ups: the same texts, follow-ups included.
    assert sorted(texts) == sorted(r["text"] for r in questions)
    assert sum(1 for r in questions if "conv" not in r) == state.total_questions()
    assert path.read_bytes().endswith(b'{"id":"00000000000001'), "a file being written is left as it is"


@pytest.mark.parametrize("seed", range(6))
def test_what_the_current_settings_leave_out_is_neither_counted_nor_continued(tmp_path: Path, seed: int) -> None:
    from pipeline.store.shape import Scope, shape_of

    rnd = random.Random(seed)
    questions = _skewed_questions(rnd, 400)
    answers = [a(r["id"], 1, "failed") for r in questions if "conv" not in r and rnd.random() < 0.5]
    settings = parse_settings({"paths": {"data_dir": str(tmp_path), "out_dir": str(tmp_path / "out")},
                               "questions": {"aspects": ["A", "B"], "topic": "新题"}}, environ={})
    old = shape_of(settings) | {"topic": "旧题", "aspects": ASPECTS}
    events = [{"event": "run_start", "time": 1.0, "seq_from": 0, "shape": old},
              {"event": "run_start", "time": 2.0, "seq_from": 150, "shape": shape_of(settings)}]
    settings.state_dir.mkdir(parents=True)
    for name, path in ledger_paths(settings.state_dir).items():
        rows = {"questions": questions, "answers": answers, "events": events}[name]
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))

    loaded = load_state(settings, repair=True, block_size=rnd.choice([64, 300, 4096, 1 << 20]))

    scope = Scope(["A", "B"], [(0, 150, "旧题")])
    assert loaded == derive_state(questions, answers, events, aspects=["A", "B"], min_turns=1, max_turns=1,
                                  max_answer_attempts=3, scope=scope)
    firsts = [r for r in questions if "conv" not in r]
    kept = [r for r in firsts if r["seq"] >= 150 and r["aspect"] in ("A", "B")]
    assert loaded.accepted == {"A": sum(r["aspect"] == "A" for r in kept), "B": sum(r["aspect"] == "B" for r in kept)}
    assert {p.conv for p in loaded.pending} <= {r["id"] for r in kept}
    assert loaded.set_aside.get("topic 旧题", 0) == sum(r["seq"] < 150 for r in firsts)
    for aspect in "CD":
        assert loaded.set_aside.get(f"aspect {aspect}", 0) == sum(
            r["seq"] >= 150 and r["aspect"] == aspect for r in firsts)


def _gave_up(why: str | None, per_aspect: int = 5, rounds: int = 3) -> dict[str, Any]:
    ev: dict[str, Any] = {"event": "aspect_exhausted", "aspect": "A", "accepted": 2}
    if why is not None:
        ev |= {"why": why, "per_aspect": per_aspect, "max_stale_rounds": rounds}
    return ev


@pytest.mark.parametrize(
    ("events", "per_aspect", "rounds", "retry_short", "final"),
    [
        ([_gave_up("saturated")], 5, 3, False, {"A"}),
        ([_gave_up("saturated")], 5, 2, False, {"A"}),      # fewer rounds now: still nothing new
        ([_gave_up("saturated")], 8, 3, False, set()),      # more questions wanted: reopened
        ([_gave_up("saturated")], 5, 6, False, set()),      # more rounds allowed: reopened
        ([_gave_up("saturated")], 5, 3, True, set()),       # qa --retry-short
        ([_gave_up("unusable")], 5, 3, False, set()),       # unusable replies never close an aspect
        ([_gave_up(None)], 5, 3, False, set()),             # written before the two were told apart
        ([_gave_up("saturated"), _gave_up("unusable")], 5, 3, False, set()),  # the last one counts
    ],
)
def test_only_saturation_gives_an_aspect_up_for_good(
    events: list[dict[str, Any]], per_aspect: int, rounds: int, retry_short: bool, final: set[str]
) -> None:
    assert aspects_given_up(events, per_aspect, rounds, retry_short)[0] == final


def test_a_retried_later_turn_asks_its_accepted_follow_up_never_a_rejected_text() -> None:
    rejected = json.dumps([f"草稿问题{i}是什么？" for i in range(40)], ensure_ascii=False)  # 600+ characters
    questions = [q("x", "A", 0), q("y", "A", 1), {"id": "fx", "conv": "x", "turn": 2, "text": "追问x？"}]
    answers = [a("x", 1, "answered"), a("x", 2, "vetoed", question="追问x？"),
               a("y", 1, "answered"), a("y", 2, "failed", question=rejected)]  # a ledger of before the fix
    for retry in ((), ("vetoed", "failed")):
        s = derive_state(questions, answers, [], aspects=["A"], min_turns=2, max_turns=2,
                         max_answer_attempts=3, retry=retry)
        nxt = {p.conv: (p.next_turn, p.next_question) for p in s.pending}
        assert nxt.get("y") == (2, None), "a new follow-up is written; the rejected text is never asked"
        assert nxt.get("x") == ((2, "追问x？") if retry else None)
