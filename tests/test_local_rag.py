"""The local RAG backend: tokenizer, passage selection, prompt, index cache and
the answerer against the fake LLM (real openai SDK on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import InputError, QuotaExhausted, SettingsError
from pipeline.services.llm import LLMClient
from pipeline.services.local_rag import (
    INDEX_DIR,
    NOT_IN_MATERIAL,
    LocalAnswerer,
    Passage,
    answer_messages,
    build_index,
    is_not_in_material,
    load_or_build_index,
    render_passages,
    select_passages,
    tokenize,
)
from pipeline.settings import LLMSettings, Settings, parse_settings
from tests.fakes.llm_server import FakeLLM, Failure

# A tiny corpus: each file holds facts no other file has, in Chinese and English,
# in a sub-folder and a Markdown file too.
CORPUS: dict[str, str] = {
    "overview/release.txt": (
        "《黑神话：悟空》是游戏科学开发的动作角色扮演游戏。\n\n"
        "游戏于2024年8月20日正式发售，登陆PC与PlayStation 5平台。"
    ),
    "bosses.md": (
        "# 黄风岭\n\n黄风大圣盘踞黄风岭，能吹起三昧神风。"
        "天命人须先取得定风珠，才能破解黄风大圣的神风。"
    ),
    "music.txt": "游戏的配乐融合了陕北说书与唢呐，主题曲《云宫迅音》被重新编曲。",
    "combat_en.txt": (
        "The Destined One fights with a staff. Smash Stance builds focus points, "
        "Pillar Stance lets the staff be planted to dodge, and Thrust Stance pierces armour."
    ),
}

# Question -> (a fact the answer must come from, the file holding it).
FACTS: dict[str, tuple[str, str]] = {
    "黑神话悟空是什么时候发售的？": ("2024年8月20日", "overview/release.txt"),
    "怎样破解黄风大圣的神风？": ("定风珠", "bosses.md"),
    "游戏配乐用了哪些乐器？": ("唢呐", "music.txt"),
    "What does Pillar Stance let the staff do?": ("planted to dodge", "combat_en.txt"),
}
OFF_TOPIC = ("量子纠缠实验的诺贝尔奖得主", "How do I bake sourdough bread at home?")


def write_corpus(root: Path, files: dict[str, str] = CORPUS) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def make_settings(
    tmp_path: Path, llm: LLMSettings | None = None, language: str = "zh", **rag: Any
) -> Settings:
    data = {
        "paths": {"data_dir": str(tmp_path / "data"), "out_dir": str(tmp_path / "out")},
        "questions": {"language": language, "topic": "黑神话：悟空"},
        "rag": {"backend": "local", **rag},
    }
    settings = parse_settings(data, environ={})
    return dataclasses.replace(settings, llm=llm) if llm is not None else settings


def prompt_parts(messages: list[dict[str, str]]) -> tuple[str, str]:
    """(material, question) of an answer prompt, in either language."""
    user = messages[-1]["content"]
    m = re.search(r"(?:资料：|Material:)\n(.*)\n\n(?:问题：|Question: )(.*)$", user, re.S)
    assert m is not None, user
    return m.group(1), m.group(2)


def grounded_responder(messages: list[dict[str, str]]) -> str:
    """Answer a known question only when its fact is in the material sent."""
    material, question = prompt_parts(messages)
    fact = FACTS.get(question, ("\x00", ""))[0]
    return f"答案是{fact}。" if fact in material else NOT_IN_MATERIAL


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "data")


# --------------------------------------------------------------------------- pure pieces


@pytest.mark.parametrize(
    ("text", "present", "absent"),
    [
        ("黑神话悟空的发售日期", {"发售", "日期", "发售日期", "悟空"}, {"的"}),
        ("Black Myth: WUKONG's release", {"black", "myth", "wukong", "release"}, {"Black", ":"}),
        ("ＰＳ５版本", {"ps5", "版本"}, {"ＰＳ５"}),  # full-width letters match ASCII
        ("什么是金箍棒？", {"金箍棒", "金箍"}, {"什么", "是", "？"}),
        ("What is the staff_stance?", {"staff", "stance"}, {"what", "is", "the", "staff_stance"}),
        ("PC与PlayStation5平台", {"pc", "playstation5", "平台"}, {"与"}),
        ("", set(), {""}),
    ],
)
def test_tokenize_mixes_jieba_search_words_and_lowercase_words(
    text: str, present: set[str], absent: set[str]
) -> None:
    tokens = set(tokenize(text))
    assert present <= tokens
    assert not (absent & tokens)


@pytest.mark.parametrize(
    ("scores", "top_k", "min_score", "rel", "expected"),
    [
        ([0.0, 0.0, 0.0], 3, 0.0, 0.0, []),            # nothing matched at all
        ([1.0, 3.0, 2.0], 3, 0.0, 0.0, [1, 2, 0]),      # best first
        ([1.0, 3.0, 2.0], 2, 0.0, 0.0, [1, 2]),         # top_k caps
        ([1.0, 3.0, 2.0], 3, 2.0, 0.0, [1, 2]),         # absolute floor
        ([1.0, 3.0, 2.0], 3, 3.5, 0.0, []),             # best below the floor: none
        ([1.0, 10.0, 4.0], 3, 0.5, 0.5, [1]),           # relative bar drops weak ones
        ([2.0, 2.0, 1.0], 3, 0.0, 1.0, [0, 1]),         # ties keep corpus order
        ([], 3, 0.0, 0.0, []),
    ],
)
def test_select_passages_applies_floor_relative_bar_and_top_k(
    scores: list[float], top_k: int, min_score: float, rel: float, expected: list[int]
) -> None:
    assert select_passages(scores, top_k=top_k, min_score=min_score,
                           min_relative_score=rel) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (NOT_IN_MATERIAL, True),
        (" `NOT_IN_MATERIAL`。", True),
        ("not in material", True),                      # models change case and spacing
        ("定风珠可以破解神风。NOT_IN_MATERIAL", True),  # an answer with the marker is not trusted
        ("资料中没有相关信息。", True),
        ("「资料中没有相关信息」", True),
        ("定风珠可以破解神风。", False),
        ("资料中没有相关信息，但是定风珠可以破解神风。", False),
        ("", False),
    ],
)
def test_not_in_material_replies_are_recognised(reply: str, expected: bool) -> None:
    assert is_not_in_material(reply) is expected


def test_render_passages_keeps_budget_numbering_and_distinct_sources() -> None:
    passages = [Passage("a.txt", "x" * 30), Passage("b.txt", "y" * 30),
                Passage("a.txt", "z" * 30), Passage("c.txt", "w" * 30)]
    text, refs = render_passages(passages, 95)
    assert text == f"[1] (a.txt)\n{'x' * 30}\n\n[2] (b.txt)\n{'y' * 30}\n\n[3] (a.txt)\n{'z' * 30}"
    assert refs == ("a.txt", "b.txt")  # c.txt did not fit: not a ref


def test_render_passages_cuts_an_oversized_first_passage() -> None:
    text, refs = render_passages([Passage("a.txt", "x" * 100), Passage("b.txt", "y")], 10)
    assert text == "[1] (a.txt)\n" + "x" * 10
    assert refs == ("a.txt",)


def test_answer_messages_fill_placeholders_and_leave_braces_in_material_alone() -> None:
    prompt = "T={topic} M={marker}\n{passages}\nQ={question} {unknown}"
    messages = answer_messages(prompt, "persona", "悟空", "data {question} {x}", "问?")
    assert messages == [
        {"role": "system", "content": "persona"},
        {"role": "user", "content": f"T=悟空 M={NOT_IN_MATERIAL}\ndata {{question}} {{x}}\nQ=问? {{unknown}}"},
    ]
    assert answer_messages(prompt, "  ", "t", "p", "q")[0]["role"] == "user"


@pytest.mark.parametrize("missing", ["{passages}", "{question}", "{marker}"])
def test_answer_prompt_without_a_placeholder_is_a_settings_error(missing: str) -> None:
    prompt = "{topic} {passages} {question} {marker}".replace(missing, "")
    with pytest.raises(SettingsError, match=r"\[rag\] answer_prompt: .*missing " + re.escape(missing)):
        parse_settings({"rag": {"answer_prompt": prompt}}, environ={})


@pytest.mark.parametrize("language", ["zh", "en"])
def test_presets_fill_the_answer_prompt_with_every_placeholder(language: str) -> None:
    prompt = parse_settings({"questions": {"language": language}}, environ={}).rag.answer_prompt
    assert all(p in prompt for p in ("{topic}", "{passages}", "{question}", "{marker}"))


# --------------------------------------------------------------------------- retrieval


@pytest.mark.parametrize(("question", "fact_file"), [(q, f) for q, (_, f) in FACTS.items()])
def test_retrieval_ranks_the_file_holding_the_answer_first(
    tmp_path: Path, corpus: Path, question: str, fact_file: str
) -> None:
    settings = make_settings(tmp_path)
    hits = build_index(settings).search(question, settings.rag)
    assert hits, question
    assert hits[0][0].source == fact_file


@pytest.mark.parametrize("question", OFF_TOPIC)
def test_off_topic_questions_find_no_passage(tmp_path: Path, corpus: Path, question: str) -> None:
    settings = make_settings(tmp_path)
    assert build_index(settings).search(question, settings.rag) == []


def test_passages_are_the_pretraining_chunks_with_their_files(tmp_path: Path, corpus: Path) -> None:
    settings = make_settings(tmp_path)
    settings = dataclasses.replace(
        settings, pretrain=dataclasses.replace(settings.pretrain, chunk_size=40, chunk_overlap=0)
    )
    index = build_index(settings)
    assert max(len(p.text) for p in index.passages) <= 40
    assert {p.source for p in index.passages} == set(CORPUS)
    for p in index.passages:
        assert p.text in (corpus / p.source).read_text(encoding="utf-8")


def test_an_empty_corpus_is_an_input_error_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "image.png").write_bytes(b"\x89PNG")
    settings = make_settings(tmp_path)
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "data"))):
        build_index(settings)


def test_undecodable_files_are_skipped_and_named(tmp_path: Path, corpus: Path) -> None:
    (corpus / "broken.txt").write_bytes(b"\x00\x01\x02binary\x00" * 50)
    _, info = load_or_build_index(make_settings(tmp_path))
    assert info.files == len(CORPUS)
    assert [p for p, _ in info.skipped] == ["broken.txt"]
    assert "broken.txt" in info.line()


# --------------------------------------------------------------------------- the cache


def _index_files(settings: Settings) -> dict[str, int]:
    folder = settings.state_dir / INDEX_DIR
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
            for p in folder.rglob("*") if p.is_file()}


def test_index_is_reused_then_rebuilt_when_a_file_changes_is_added_or_removed(
    tmp_path: Path, corpus: Path
) -> None:
    settings = make_settings(tmp_path)
    _, first = load_or_build_index(settings)
    assert not first.cached
    written = _index_files(settings)
    assert "fingerprint.json" in written

    index, again = load_or_build_index(settings)
    assert again.cached
    assert again.line() == f"local index: {first.chunks} chunks from {len(CORPUS)} files (cached)"
    assert _index_files(settings) == written  # nothing rewritten: loaded, not rebuilt
    assert index.search("怎样破解黄风大圣的神风？", settings.rag)[0][0].source == "bosses.md"

    # A changed file: rebuilt, and the new text is what is found.
    (corpus / "music.txt").write_text("游戏的配乐使用了编钟与古琴。", encoding="utf-8")
    index, changed = load_or_build_index(settings)
    assert not changed.cached
    hits = index.search("游戏配乐用了哪些乐器？", settings.rag)
    assert "编钟" in hits[0][0].text
    assert all("唢呐" not in p.text for p in index.passages)

    # An added file, then a removed one.
    (corpus / "extra.txt").write_text("亢金龙是小西天的妖王。", encoding="utf-8")
    index, added = load_or_build_index(settings)
    assert not added.cached and added.files == len(CORPUS) + 1
    assert index.search("亢金龙是谁？", settings.rag)[0][0].source == "extra.txt"
    (corpus / "extra.txt").unlink()
    index, removed = load_or_build_index(settings)
    assert not removed.cached and removed.files == len(CORPUS)
    assert index.search("亢金龙是谁？", settings.rag) == []


def test_splitter_settings_are_part_of_the_fingerprint(tmp_path: Path, corpus: Path) -> None:
    settings = make_settings(tmp_path)
    load_or_build_index(settings)
    smaller = dataclasses.replace(
        settings, pretrain=dataclasses.replace(settings.pretrain, chunk_size=30, chunk_overlap=0)
    )
    index, info = load_or_build_index(smaller)
    assert not info.cached
    assert max(len(p.text) for p in index.passages) <= 30


def test_an_interrupted_build_is_never_loaded(tmp_path: Path, corpus: Path) -> None:
    settings = make_settings(tmp_path)
    load_or_build_index(settings)
    # A crash between removing the fingerprint and writing it back leaves none.
    (settings.state_dir / INDEX_DIR / "fingerprint.json").unlink()
    _, info = load_or_build_index(settings)
    assert not info.cached


def test_a_damaged_cache_is_rebuilt(tmp_path: Path, corpus: Path) -> None:
    settings = make_settings(tmp_path)
    load_or_build_index(settings)
    for p in (settings.state_dir / INDEX_DIR / "bm25").glob("*.npy"):
        p.unlink()
    index, info = load_or_build_index(settings)
    assert not info.cached
    assert index.search("怎样破解黄风大圣的神风？", settings.rag)[0][0].source == "bosses.md"


def test_building_and_loading_print_nothing(
    tmp_path: Path, corpus: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path)
    load_or_build_index(settings)
    load_or_build_index(settings)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


# --------------------------------------------------------------------------- the answerer


@pytest.mark.parametrize(("question", "fact"), [(q, f) for q, f in FACTS.items()])
async def test_ask_answers_from_the_retrieved_material_with_real_refs(
    tmp_path: Path, corpus: Path, fake_llm: FakeLLM, llm_settings: LLMSettings,
    llm_client: LLMClient, question: str, fact: tuple[str, str],
) -> None:
    fake_llm.responder = grounded_responder
    settings = make_settings(tmp_path, llm_settings)
    answerer = LocalAnswerer(settings, llm_client)
    assert (await answerer.probe()).startswith("local index: ")
    outcome = await answerer.ask(question)
    assert outcome.kind == "answered", outcome
    assert outcome.answer == f"答案是{fact[0]}。"
    assert outcome.state == "success"
    assert outcome.refs[0] == fact[1]
    assert all((corpus / ref).is_file() for ref in outcome.refs)
    assert fake_llm.calls == 1
    body = fake_llm.bodies[0]
    assert body["temperature"] == settings.rag.temperature
    assert body["messages"][0] == {"role": "system",
                                   "content": settings.conversations.system_prompt}
    await answerer.aclose()


async def test_english_preset_prompt_reaches_the_model(
    tmp_path: Path, corpus: Path, fake_llm: FakeLLM, llm_settings: LLMSettings,
    llm_client: LLMClient,
) -> None:
    fake_llm.responder = grounded_responder
    settings = make_settings(tmp_path, llm_settings, language="en")
    answerer = LocalAnswerer(settings, llm_client)
    outcome = await answerer.ask("What does Pillar Stance let the staff do?")
    assert outcome.kind == "answered"
    assert outcome.refs == ("combat_en.txt",)
    assert "reply with NOT_IN_MATERIAL and nothing else" in fake_llm.requests[0][-1]["content"]


@pytest.mark.parametrize("question", OFF_TOPIC)
async def test_off_topic_question_is_skipped_without_an_llm_call(
    tmp_path: Path, corpus: Path, fake_llm: FakeLLM, llm_settings: LLMSettings,
    llm_client: LLMClient, question: str,
) -> None:
    answerer = LocalAnswerer(make_settings(tmp_path, llm_settings), llm_client)
    await answerer.probe()
    outcome = await answerer.ask(question)
    assert (outcome.kind, outcome.state, outcome.refs) == ("skipped", "no passage above threshold", ())
    assert fake_llm.calls == 0


async def test_not_in_material_reply_is_skipped_with_its_reason(
    tmp_path: Path, corpus: Path, fake_llm: FakeLLM, llm_settings: LLMSettings,
    llm_client: LLMClient,
) -> None:
    # Retrieval finds 黄风大圣, but the material says nothing of his height.
    fake_llm.responder = grounded_responder
    answerer = LocalAnswerer(make_settings(tmp_path, llm_settings), llm_client)
    outcome = await answerer.ask("黄风大圣有多高？")
    assert (outcome.kind, outcome.state) == ("skipped", "not in the material")
    assert fake_llm.calls == 1
    material, _ = prompt_parts(fake_llm.requests[0])
    assert "黄风大圣" in material


async def test_blank_reply_is_a_failure(
    tmp_path: Path, corpus: Path, fake_llm: FakeLLM, llm_settings: LLMSettings,
    llm_client: LLMClient,
) -> None:
    fake_llm.responder = lambda messages: "  \n"
    answerer = LocalAnswerer(make_settings(tmp_path, llm_settings), llm_client)
    outcome = await answerer.ask("怎样破解黄风大圣的神风？")
    assert (outcome.kind, outcome.state) == ("failed", "LLM reply unusable (empty)")


@pytest.mark.parametrize("style", ["closed", "close_only"])
async def test_reasoning_is_never_the_answer_nor_its_marker(
    tmp_path: Path, corpus: Path, fake_llm: FakeLLM, llm_settings: LLMSettings,
    llm_client: LLMClient, style: str,
) -> None:
    # The reasoning mentions NOT_IN_MATERIAL and starts before the lead-in:
    # only the answer proper counts.
    fake_llm.think = style
    fake_llm.responder = lambda messages: "根据资料，黄风大圣的神风可用定风珠破解。"
    answerer = LocalAnswerer(make_settings(tmp_path, llm_settings), llm_client)
    outcome = await answerer.ask("怎样破解黄风大圣的神风？")
    assert outcome.kind == "answered"
    assert outcome.answer == "根据资料，黄风大圣的神风可用定风珠破解。"


async def test_a_reply_all_reasoning_is_a_failure_by_kind(
    tmp_path: Path, corpus: Path, fake_llm: FakeLLM, llm_settings: LLMSettings,
    llm_client: LLMClient,
) -> None:
    fake_llm.think = "unclosed"
    answerer = LocalAnswerer(make_settings(tmp_path, llm_settings), llm_client)
    outcome = await answerer.ask("怎样破解黄风大圣的神风？")
    assert (outcome.kind, outcome.state) == ("failed", "LLM reply unusable (cut_off)")


async def test_a_provider_refusal_is_a_refused_outcome_quoting_it(
    tmp_path: Path, corpus: Path, fake_llm: FakeLLM, llm_settings: LLMSettings,
    llm_client: LLMClient,
) -> None:
    fake_llm.script(Failure.refusal("deepseek"), Failure.refusal("deepseek"))
    answerer = LocalAnswerer(make_settings(tmp_path, llm_settings), llm_client)
    outcome = await answerer.ask("怎样破解黄风大圣的神风？")
    assert (outcome.kind, outcome.state) == ("refused", "refused by the provider: Content Exists Risk")


async def test_llm_errors_after_retries_are_a_failed_outcome(
    tmp_path: Path, corpus: Path, fake_llm: FakeLLM, llm_settings: LLMSettings,
    llm_client: LLMClient,
) -> None:
    fake_llm.script(*[503] * (llm_settings.max_retries + 1))
    answerer = LocalAnswerer(make_settings(tmp_path, llm_settings), llm_client)
    outcome = await answerer.ask("怎样破解黄风大圣的神风？")
    assert outcome.kind == "failed"
    assert outcome.state.startswith("LLM error: ") and "503" in outcome.state
    assert outcome.attempts == llm_settings.max_retries + 1
    assert fake_llm.calls == llm_settings.max_retries + 1


async def test_quota_exhausted_propagates(
    tmp_path: Path, corpus: Path, fake_llm: FakeLLM, llm_settings: LLMSettings,
    llm_client: LLMClient,
) -> None:
    fake_llm.quota_after = 0
    answerer = LocalAnswerer(make_settings(tmp_path, llm_settings), llm_client)
    with pytest.raises(QuotaExhausted):
        await answerer.ask("怎样破解黄风大圣的神风？")


async def test_answer_slots_follow_llm_concurrency(tmp_path: Path, llm_client: LLMClient) -> None:
    settings = make_settings(tmp_path)
    settings = dataclasses.replace(settings, llm=dataclasses.replace(settings.llm, concurrency=13))
    assert LocalAnswerer(settings, llm_client).slots == 13
