"""Questions written from the corpus's own passages, end to end: the real
openai client against the fake LLM (which writes questions FROM the passage
it is given), the embedded BM25 backend answering from the same corpus.

The corpus is crafted: each file holds facts (invented names and numbers)
that no other file holds, so a question can only come from, and only be
answered by, its own file."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.qa.passages import allot, draw, file_text, passage_id, plan_passages
from pipeline.qa.stage import run_qa
from pipeline.settings import Settings, parse_settings
from tests.fakes.llm_fixtures import FAKE_KEY, FAKE_KEY_ENV
from tests.fakes.llm_server import FakeLLM
from tests.test_local_rag import write_corpus as write_files
from tests.fakes.loops import BOTH_LOOPS

pytestmark = BOTH_LOOPS

# Each file: facts only it holds. Sentences are long enough for the fake to quote.
CORPUS: dict[str, str] = {
    "瓦伦塔.txt": (
        "瓦伦塔城是泽洛克星的首都，建于第七纪元的第三百二十年。\n\n"
        "瓦伦塔城的城墙由青曜石砌成，高达四十七丈，共有九座城门。\n\n"
        "瓦伦塔城的守护者名叫伊索菲尔，她手持一柄名为霜鸣的长枪。\n"
    ),
    "地理/科尔德河.txt": (
        "科尔德河发源于阿斯玛高原，全长一千八百六十里，最终注入翡翠湾。\n\n"
        "科尔德河上游盛产一种名叫银鳞鲑的鱼，每年秋季逆流而上产卵。\n"
    ),
    "人物/马格努斯.md": (
        "# 马格努斯\n\n马格努斯是一位擅长炼制星火药剂的炼金术士，出生于洛维恩村。\n\n"
        "马格努斯的导师是隐居在雾隐塔中的老法师塞拉芬，两人共同研究了十二年。\n"
    ),
    "english/orchard.txt": (
        "The Quillmere orchard grows seventeen varieties of blue pear on its terraces.\n\n"
        "Harvest in the Quillmere orchard begins on the ninth day of the frost moon.\n"
    ),
}


def write_corpus(root: Path) -> Path:
    return write_files(root, CORPUS)


def make_settings(tmp_path: Path, fake: FakeLLM | None = None, **questions: Any) -> Settings:
    data: dict[str, Any] = {
        "paths": {"data_dir": str(tmp_path / "data"), "out_dir": str(tmp_path / "out")},
        "questions": {"source": "corpus", "per_passage": 2, "passage_size": 60, "max_chars": 60,
                      **questions},
        "rag": {"backend": "local"},
        "conversations": {"min_answer_chars": 2},
        "run": {"grace_s": 5, "progress_interval_s": 60},
    }
    if fake is not None:
        data["llm"] = {"base_url": fake.base_url, "model": "fake-model", "api_key_env": FAKE_KEY_ENV,
                       "timeout_s": 10, "max_retries": 0, "rpm": 100_000, "tpm": 100_000_000}
    return parse_settings(data, source="test", environ={FAKE_KEY_ENV: FAKE_KEY})


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",), shape="mixed") as fake:
        yield fake


def rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


_QUOTED = re.compile(r"「([^」]+)」|\"([^\"]+)\"")


def quoted(question: str) -> str:
    m = _QUOTED.search(question)
    assert m is not None, question
    return m.group(1) or m.group(2)


def passage_of(messages: list[dict[str, str]]) -> str | None:
    """The passage a passage question-writer prompt carries, else None."""
    m = re.search(r"<passage>\n(.*?)\n</passage>", messages[-1]["content"], re.DOTALL)
    return m.group(1) if m is not None else None


def passage_prompts(fake: FakeLLM) -> list[str]:
    """The passages the fake was asked to write questions from, in order."""
    return [p for p in map(passage_of, fake.requests) if p is not None]


# --------------------------------------------------------------------------- selection (pure)


@pytest.mark.parametrize(
    ("counts", "budget", "expected"),
    [
        ([5, 3, 2], 0, [5, 3, 2]),  # 0: every passage
        ([5, 3, 2], 99, [5, 3, 2]),
        ([5, 3, 2], 2, [1, 1, 0]),  # fewer than files: the largest files first
        ([10, 10, 0], 4, [2, 2, 0]),  # an empty file gets nothing
        ([90, 9, 1], 10, [7, 2, 1]),  # one each, then 7 x (89, 8, 0) / 97 by largest remainder
    ],
)
def test_allot_gives_each_file_one_then_shares_in_proportion(
    counts: list[int], budget: int, expected: list[int]
) -> None:
    assert allot(counts, budget) == expected


@pytest.mark.parametrize("budget", range(1, 60))
def test_allot_spends_the_budget_exactly_and_never_more_than_a_file_holds(budget: int) -> None:
    counts = [17, 1, 0, 9, 23, 4]
    shares = allot(counts, budget)
    assert sum(shares) == min(budget, sum(counts))
    assert all(0 <= s <= c for s, c in zip(shares, counts))
    if budget >= 5:  # as many as the non-empty files: every one of them is covered
        assert all(s >= 1 for s, c in zip(shares, counts) if c)


def test_draw_is_seeded_by_seed_and_file_and_sorted() -> None:
    a = draw(100, 10, 7, "a.txt")
    assert a == draw(100, 10, 7, "a.txt") == sorted(a) and len(set(a)) == 10
    assert a != draw(100, 10, 8, "a.txt")
    assert a != draw(100, 10, 7, "b.txt")
    assert draw(5, 9, 0, "a.txt") == [0, 1, 2, 3, 4]


def test_selection_is_the_same_on_every_run_and_spans_point_at_the_text(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "data")
    settings = make_settings(tmp_path, max_passages=5, passage_seed=3)
    first, second = plan_passages(settings), plan_passages(settings)
    assert first.selected_ids == second.selected_ids
    assert first.passages == second.passages
    assert len(first.passages) == 5 and first.total > 5
    assert {p.file for p in first.passages} == set(CORPUS)  # 5 >= 4 files: every file has one
    for p in first.passages:
        text = (data / p.file).read_text(encoding="utf-8")
        assert text[p.start : p.end] == p.text and p.id == passage_id(p.text)
        assert file_text(data / p.file)[p.start : p.end] == p.text
    everything = plan_passages(make_settings(tmp_path))
    assert len(everything.passages) == everything.total
    assert plan_passages(make_settings(tmp_path, max_passages=5, passage_seed=4)).selected_ids != first.selected_ids


def test_passages_without_texts_count_the_same_selection(tmp_path: Path) -> None:
    write_corpus(tmp_path / "data")
    settings = make_settings(tmp_path, max_passages=3)
    assert plan_passages(settings, read=False).selected_ids == plan_passages(settings).selected_ids


# --------------------------------------------------------------------------- the run


async def test_every_file_gets_questions_and_every_question_traces_to_its_passage(
    tmp_path: Path, llm: FakeLLM
) -> None:
    data = write_corpus(tmp_path / "data")
    settings = make_settings(tmp_path, llm)

    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete", result.detail
    questions = [r for r in rows(settings.state_dir / "questions.jsonl") if "conv" not in r]
    assert {q["file"] for q in questions} == set(CORPUS)
    plan = plan_passages(settings)
    assert {q["passage"] for q in questions} == set(plan.selected_ids)  # every passage gave some
    for q in questions:
        start, end = q["span"]
        text = (data / q["file"]).read_text(encoding="utf-8")[start:end]
        assert passage_id(text) == q["passage"]
        assert quoted(q["text"]) in text  # written from this passage's own words
    # Each passage was asked once, and got its own text.
    asked = passage_prompts(llm)
    assert sorted(asked) == sorted(p.text for p in plan.passages)
    # Answered from the file the question came from: the crafted facts live nowhere else.
    answers = {r["conv"]: r for r in rows(settings.state_dir / "answers.jsonl")}
    by_id = {q["id"]: q for q in questions}
    answered = [a for a in answers.values() if a["kind"] == "answered"]
    assert len(answered) >= len(questions) - 1
    for a in answered:
        assert by_id[a["conv"]]["file"] in a["refs"]
    assert "## Questions per aspect" not in (settings.out_dir / "report.md").read_text(encoding="utf-8")
    # Any record of the dataset traces to its passage through the side file, line by line.
    records = rows(settings.out_dir / "conversations.jsonl")
    sources = rows(settings.out_dir / "conversations.provenance.jsonl")
    assert len(records) == len(sources) == len(answered)
    for n, (record, source) in enumerate(zip(records, sources), 1):
        assert set(record) == {"conversation"}  # the dataset stays XTuner records
        q = by_id[source["conv"]]
        assert source == {"line": n, "conv": q["id"], "source": "corpus", "passage": q["passage"],
                          "file": q["file"], "span": q["span"]}
        assert record["conversation"][0]["input"] == q["text"]


async def test_a_resume_asks_no_passage_twice(tmp_path: Path) -> None:
    write_corpus(tmp_path / "data")
    served: list[str] = []

    def responder(fake: FakeLLM) -> Any:
        def respond(messages: list[dict[str, str]]) -> str:
            passage = passage_of(messages)
            if passage is not None:
                served.append(passage)
            return fake.default_responder(messages)
        return respond

    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",)) as first:
        first.responder = responder(first)
        first.quota_after = 4  # a few passages and answers, then the balance is gone
        settings = make_settings(tmp_path, first)
        stopped = await run_qa(settings, install_signals=False)
    assert stopped.status == "quota"
    before = list(served)
    assert 0 < len(before)
    status = status_of(settings)
    assert status["passages"]["left"] == status["passages"]["selected"] - len(set(before)) > 0
    assert status["resume"] is not None
    assert status["conversations"]["pending"] > 0  # corpus questions written, not answered yet

    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",)) as second:
        second.responder = responder(second)
        resumed = await run_qa(make_settings(tmp_path, second), install_signals=False)
    assert resumed.status == "complete", resumed.detail
    again = served[len(before):]
    assert not set(before) & set(again)  # nothing served before is asked again
    assert sorted(served) == sorted(p.text for p in plan_passages(settings).passages)

    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",)) as third:
        third.responder = responder(third)
        done = await run_qa(make_settings(tmp_path, third), install_signals=False)
        assert done.status == "complete" and passage_prompts(third) == []
    status = status_of(settings)
    assert status["passages"]["left"] == 0 and status["resume"] is None
    # The questions written before the stop but not yet answered were answered by the resume.
    answered = {r["conv"] for r in rows(settings.state_dir / "answers.jsonl")}
    assert {q["id"] for q in rows(settings.state_dir / "questions.jsonl") if "conv" not in q} <= answered
    assert status["questions"]["corpus"] > 0


def status_of(settings: Settings) -> dict[str, Any]:
    from pipeline.outputs.status import build_status
    from pipeline.store.view import open_ledgers, state_from_ledgers

    with open_ledgers(settings.state_dir) as ledgers:
        return build_status(settings, ledgers, state_from_ledgers(settings, ledgers), None)


def test_the_closing_line_says_how_many_passages_were_not_asked_and_what_to_do() -> None:
    from pipeline.qa.stage import QAResult

    line = QAResult(status="complete", detail="", conversations=4,
                    stats={"passages": [3, 5], "corpus_questions": 6}).line()
    assert "passages 3/5 asked, 6 questions from them" in line
    assert "2 of 5 passages not asked: their calls failed (see qa.log); run `python run.py qa` again" in line
    whole = QAResult(status="complete", detail="", conversations=4, stats={"passages": [5, 5]}).line()
    assert "not asked" not in whole


def test_a_passage_question_row_carries_its_source_and_an_aspect_row_keeps_its_layout() -> None:
    from pipeline.jsonl import dumps_line
    from pipeline.store.schema import is_from_passage, question_row

    row = question_row(id="00000000000000a1", aspect="", text="q?", seq=3, passage="00000000000000b2",
                       file="a/b.txt", span=(10, 52))
    assert dumps_line(row) == (b'{"id":"00000000000000a1","aspect":"","text":"q?","seq":3,'
                               b'"passage":"00000000000000b2","file":"a/b.txt","span":[10,52]}\n')
    assert is_from_passage(row)
    aspect_row = question_row(id="00000000000000a1", aspect="A", text="q?", seq=3)
    assert dumps_line(aspect_row) == b'{"id":"00000000000000a1","aspect":"A","text":"q?","seq":3}\n'
    assert not is_from_passage(aspect_row)
    assert "span" not in aspect_row, "a field at its default is not written"


def test_the_side_file_names_each_records_aspect_or_passage_line_by_line(tmp_path: Path) -> None:
    from pipeline.outputs.dataset import (
        conversations_with_sources,
        write_dataset_with_sources,
    )
    from pipeline.store.schema import question_row

    questions = [
        question_row(id="00000000000000a1", aspect="战斗", text="a?", seq=0),
        question_row(id="00000000000000a2", aspect="", text="b?", seq=1, passage="00000000000000f1",
                     file="x/y.txt", span=(3, 9)),
        question_row(id="00000000000000a3", aspect="战斗", text="c?", seq=2),  # not answered
    ]
    answered = {"00000000000000a1": "A", "00000000000000a2": "B"}

    def row_of(conv: str, turn: int) -> dict[str, Any] | None:
        if turn != 1 or conv not in answered:
            return None
        return {"kind": "answered", "question": "q", "answer": answered[conv]}

    path = tmp_path / "conversations.jsonl"
    assert write_dataset_with_sources(path, conversations_with_sources(questions, row_of, "", 1)) == 2
    assert [r["conversation"][0]["output"] for r in rows(path)] == ["A", "B"]
    assert rows(tmp_path / "conversations.provenance.jsonl") == [
        {"line": 1, "conv": "00000000000000a1", "source": "aspect", "aspect": "战斗"},
        {"line": 2, "conv": "00000000000000a2", "source": "corpus", "passage": "00000000000000f1",
         "file": "x/y.txt", "span": [3, 9]},
    ]


async def test_the_report_shows_coverage_per_file_yield_by_source_and_flags_off_passage_answers(
    tmp_path: Path,
) -> None:
    """One file's facts are missing from the knowledge base (its questions are
    skipped) and one answer talks about something else: the report names the
    uncovered file and why, and flags the answer without dropping it."""
    write_corpus(tmp_path / "data")

    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",)) as fake:
        def respond(messages: list[dict[str, str]]) -> str:
            user = messages[-1]["content"]
            if "NOT_IN_MATERIAL" in user and "Quillmere" in user.rsplit("Question:", 1)[-1]:
                return "NOT_IN_MATERIAL"  # as if the orchard file were not in the knowledge base
            if "NOT_IN_MATERIAL" in user and "「科尔德河发源于阿斯玛高原" in user:
                return "这个问题的答案是一只会飞的大象。"  # names nothing of its passage
            return fake.default_responder(messages)

        fake.responder = respond
        settings = make_settings(tmp_path, fake, aspects=["战斗系统"], per_aspect=2, source="both",
                                 check_passage_terms=True)
        result = await run_qa(settings, install_signals=False)
    assert result.status == "complete", result.detail

    report = orjson.loads((settings.out_dir / "report.json").read_bytes())
    cov = report["coverage"]
    per_file = {r["file"]: r for r in cov["per_file"]}
    assert set(per_file) == set(CORPUS)
    orchard = per_file["english/orchard.txt"]
    assert orchard["answered"] == 0 and orchard["skipped"] == orchard["questions"] > 0
    assert cov["uncovered"] == [{"file": "english/orchard.txt",
                                 "why": "the backend found no answer (is the file in the knowledge base?)"}]
    assert cov["files"] == 4 and cov["files_covered"] == 3 and cov["files_share"] == 0.75
    plan = plan_passages(settings)
    assert cov["passages_selected"] == cov["passages_asked"] == len(plan.passages)
    orchard_passages = sum(1 for p in plan.passages if p.file == "english/orchard.txt")
    assert cov["passages_covered"] == len(plan.passages) - orchard_passages
    for r in cov["per_file"]:
        assert r["questions"] == r["asked"] == r["answered"] + r["skipped"] + r["no_answer"]

    corpus, aspect = report["sources"]["corpus"], report["sources"]["aspect"]
    assert corpus["questions"] == sum(r["questions"] for r in cov["per_file"])
    assert corpus["answered"] == sum(r["answered"] for r in cov["per_file"])
    assert aspect["questions"] == 2 and aspect["asked"] == 2

    flagged = report["off_passage"]["flagged"]
    assert [f["file"] for f in flagged] == ["地理/科尔德河.txt"]
    assert flagged[0]["answer"] == "这个问题的答案是一只会飞的大象。"
    assert report["off_passage"]["checked"] == corpus["answered"]
    records = rows(settings.out_dir / "conversations.jsonl")
    assert any(r["conversation"][0]["output"] == flagged[0]["answer"] for r in records)  # flagged, kept

    assert report["run"]["questions_new"] == aspect["questions"] + corpus["questions"]
    md = (settings.out_dir / "report.md").read_text(encoding="utf-8")
    assert "## Coverage of the corpus" in md and "- `english/orchard.txt`: the backend found no answer" in md
    assert "| corpus |" in md and "| aspect |" in md


def test_key_terms_leave_out_what_most_passages_share_and_an_answer_must_name_one() -> None:
    from pipeline.qa.terms import document_frequency, key_terms, names_any

    passages = ["黑神话的瓦伦塔城建于2024年。", "黑神话的科尔德河很长。", "黑神话的马格努斯会炼金。",
                "The Quillmere orchard grows blue pears."]
    df, n = document_frequency(passages)
    keys = key_terms(passages[0], df, n)
    assert "黑神" not in keys and "瓦伦" in keys and "2024" in keys  # 3 of 4 passages say 黑神话
    assert names_any("瓦伦塔城是首都。", keys) and names_any("It was 2024.", keys)
    assert not names_any("黑神话很好玩。", keys)
    en = key_terms(passages[3], df, n)
    assert names_any("QUILLMERE has pears", en) and not names_any("The pears are blue.", en - {"blue", "pears"})
    assert "the" not in en


def test_the_dry_run_counts_one_call_per_passage_not_asked_yet(tmp_path: Path) -> None:
    import dataclasses

    from pipeline.outputs.dry_run import plan_run
    from pipeline.store.view import state_from_rows

    write_corpus(tmp_path / "data")
    settings = make_settings(tmp_path, max_passages=5, per_passage=2)
    ids = plan_passages(settings, read=False).selected_ids
    fresh = state_from_rows(settings, {})
    plan = plan_run(settings, fresh, passages=ids)
    assert plan.passage_calls == 5 and plan.question_calls == 0  # source "corpus": no aspect asked
    assert plan.questions_left == 10 and plan.rag_requests == 10
    assert plan.llm_calls == 5 + 10  # the local backend answers with the LLM too
    assert plan.cost > 0 and any("5 passages" in line for line in plan.lines())
    resumed = dataclasses.replace(fresh, passages_asked=set(ids[:3]))
    assert plan_run(settings, resumed, passages=ids).passage_calls == 2
    assert plan_run(settings, fresh).passage_calls == 0


async def test_a_question_both_sources_write_is_kept_once(tmp_path: Path) -> None:
    from tests.fakes.llm_server import passage_questions

    write_corpus(tmp_path / "data")
    shared = passage_questions(CORPUS["瓦伦塔.txt"], 1)[0]  # what the passage writer will write too

    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",)) as fake:
        def respond(messages: list[dict[str, str]]) -> str:
            if "「战斗系统」" in messages[-1]["content"]:
                return orjson.dumps([shared, "瓦伦塔城的守护者使用什么武器？"]).decode()
            return fake.default_responder(messages)

        fake.responder = respond
        settings = make_settings(tmp_path, fake, source="both", aspects=["战斗系统"], per_aspect=2,
                                 max_stale_rounds=1)
        result = await run_qa(settings, install_signals=False)
    assert result.status == "complete", result.detail
    texts = [r["text"] for r in rows(settings.state_dir / "questions.jsonl") if "conv" not in r]
    assert texts.count(shared) == 1 and "瓦伦塔城的守护者使用什么武器？" in texts
    assert len(texts) == len(set(texts))
    assert result.stats["dropped"].get("duplicate", 0) >= 1


def test_progress_lines_show_the_passages_asked_only_when_there_are_some() -> None:
    from pipeline.outputs.progress import Sample, format_line

    base = dict(t=0.0, elapsed=61.0, accepted={"a": 3}, target={"a": 10}, outcomes={}, in_flight=0,
                llm_calls=1, prompt_tokens=1, completion_tokens=1, cost=0.0)
    line = format_line(Sample(**base, passages=(4, 9), corpus_questions=11), 1, 1, (60, 100), None)
    assert "| questions 3/10 | passages 4/9 questions 11 | answered 0" in line
    assert "passages" not in format_line(Sample(**base), 1, 1, (60, 100), None)


@pytest.mark.parametrize(("language", "asks"), [("zh", "最多2个问题"), ("en", "at most 2 questions")])
def test_passage_prompts_follow_the_language_and_carry_the_passage_and_its_file(language: str, asks: str) -> None:
    from pipeline.qa.questions import passage_messages

    settings = parse_settings({"questions": {"language": language, "topic": "Zelok"}})
    system, user = passage_messages(settings.questions, "瓦伦塔城是首都。", "a/b.txt", 2)
    assert "Zelok" in system["content"] and asks in user["content"]
    assert "<passage>\n瓦伦塔城是首都。\n</passage>" in user["content"] and "a/b.txt" in user["content"]
    custom = parse_settings({"questions": {"passage_system_prompt": "Only {n} about {topic}.",
                                           "passage_user_prompt": "From {file}: {passage} {{json}}"}})
    system, user = passage_messages(custom.questions, "P", "f.txt", 3)
    assert system["content"] == "Only 3 about 黑神话：悟空." and user["content"] == "From f.txt: P {json}"


@pytest.mark.parametrize(("questions", "message"), [
    ({"source": "chapters"}, "[questions] source: expected 'aspects' or 'corpus' or 'both'"),
    ({"passage_size": 100, "passage_overlap": 100}, "[questions] passage_overlap: expected a value >= 0 and less than passage_size"),
    ({"passage_user_prompt": "no placeholder"}, "[questions] passage_user_prompt: expected the placeholder {passage}"),
    ({"max_passages": -1}, "[questions] max_passages: expected a value >= 0"),
    ({"per_passage": 0}, "[questions] per_passage: expected a value >= 1"),
])
def test_bad_passage_settings_name_their_key(questions: dict[str, Any], message: str) -> None:
    from pipeline.errors import SettingsError

    with pytest.raises(SettingsError) as caught:
        parse_settings({"questions": questions}, source="s.toml")
    assert message in str(caught.value) and "s.toml" in str(caught.value)


def test_source_corpus_asks_no_aspect_and_needs_none() -> None:
    settings = parse_settings({"questions": {"source": "corpus", "aspects": []}})
    assert settings.questions.aspects == ()
    assert parse_settings({"questions": {"source": "corpus"}}).questions.aspects == ()


async def test_source_corpus_on_a_folder_without_text_stops_before_any_call(tmp_path: Path, llm: FakeLLM) -> None:
    from pipeline.errors import InputError

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "empty.txt").write_text("", encoding="utf-8")
    settings = make_settings(tmp_path, llm)
    with pytest.raises(InputError) as caught:
        await run_qa(settings, install_signals=False)
    assert str(tmp_path / "data") in str(caught.value) and "no passage to write questions from" in str(caught.value)
    assert llm.calls == 0


def test_spans_count_the_cleaned_text_the_passages_were_cut_from(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    raw = "第一句话\u200b里藏着零宽字符\x07和响铃。\n\n第二句话说瓦伦塔城有九座城门。\n"
    (data / "dirty.txt").write_text(raw, encoding="utf-8")
    plan = plan_passages(make_settings(tmp_path, passage_size=20))
    text = file_text(data / "dirty.txt")
    assert text != raw  # the reader cleaned it
    assert [text[p.start : p.end] for p in plan.passages] == [p.text for p in plan.passages]
    assert "\x07" not in "".join(p.text for p in plan.passages)


def test_passages_are_asked_round_robin_over_the_files(tmp_path: Path) -> None:
    write_corpus(tmp_path / "data")
    plan = plan_passages(make_settings(tmp_path))
    files = [p.file for p in plan.passages]
    first_round = files[: len(CORPUS)]
    assert sorted(first_round) == sorted(CORPUS)  # every file once before any file twice
    assert [p.id for p in plan.passages] == plan.selected_ids == plan_passages(
        make_settings(tmp_path), read=False).selected_ids
    for f in CORPUS:  # within a file, in file order
        starts = [p.start for p in plan.passages if p.file == f]
        assert starts == sorted(starts)
