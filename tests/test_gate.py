"""The answer gate: cleaning, references, lead-ins, material talk, refusals, limits.

The examples are written here (in the shapes real HuixiangDou and local
answers take); none is read from outside the repository."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from pipeline.errors import SettingsError
from pipeline.qa.gate import (
    REASONS,
    GateResult,
    _Matcher,
    _tidy,
    compile_gate,
)
from pipeline.settings import ConversationSettings, parse_settings

CS = ConversationSettings(min_answer_chars=10)
LONG = "天命人是玩家扮演的角色，是一只寻找大圣六根的猴子。"
GATE = compile_gate(CS)


# --------------------------------------------------------------------------- lead-ins and tidying


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        (f"根据提供的材料，{LONG}", LONG),
        (f"根据已知信息：{LONG}", LONG),
        (f"根据材料 {LONG}", LONG),
        (f"根据提供的材料，根据已知信息，{LONG}", LONG),
        (f"根据提供的参考材料，{LONG}", LONG),
        ("Based on the provided materials, the Destined One is the player's monkey.",
         "The Destined One is the player's monkey."),
        ("According to the context: Wukong was released on 2024-08-20.",
         "Wukong was released on 2024-08-20."),
        # Lead-ins where any sentence or list item starts, not only the first.
        (f"{LONG}\n\n1. **来历**：根据提供的材料，他生于花果山。", f"{LONG}\n\n1. **来历**：他生于花果山。"),
    ],
)
def test_lead_ins_go_wherever_a_sentence_starts(raw: str, cleaned: str) -> None:
    assert GATE(raw) == GateResult(cleaned, None, (), ("lead_in",))


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        (f"  {LONG}  ", LONG),
        ("第一行  有   多余空格\r\n\r\n\r\n\r\n第二行", "第一行 有 多余空格\n\n第二行"),
        # Nested Markdown lists keep their indentation; a no-break space stays.
        ("要点：\n1. **甲**：\n   - 子项一\n   - 子项二", "要点：\n1. **甲**：\n   - 子项一\n   - 子项二"),
        ("价格\xa0100 元，共三种版本。", "价格\xa0100 元，共三种版本。"),
    ],
)
def test_whitespace_is_tidied_without_counting_as_a_change(raw: str, cleaned: str) -> None:
    assert GATE(raw) == GateResult(cleaned, None, (), ())


def test_invisible_characters_are_cleaned_from_answers_and_counted() -> None:
    raw = "\ufeff天命\u200b人是玩家扮演的角色\u00ad，\u202e是一只猴子。\x1b[0m"
    assert GATE(raw) == GateResult("天命人是玩家扮演的角色，是一只猴子。", None, (), ("cleaned",))


def test_a_lowercase_start_is_kept_when_the_gate_did_not_make_it() -> None:
    assert GATE("iPhone ports are not planned for the game.").answer[0] == "i"


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("raw", "refs"),
    [
        (f"参考资料：\n- 游戏概述.md\n- 角色.txt\n\n{LONG}", ("游戏概述.md", "角色.txt")),
        (f"{LONG}\n\n**References:**\n1. [Game guide](https://example.com/g)\n2. `chapter-2.md`",
         ("Game guide", "chapter-2.md")),
        (f"{LONG}\n\n资料来源：游戏概述.md、角色.txt", ("游戏概述.md", "角色.txt")),
        (f"## 参考文献\n\n* 西游记.txt\n\n{LONG}", ("西游记.txt",)),
    ],
    ids=["header-first", "english-at-the-end", "inline-list", "markdown-heading"],
)
def test_a_references_list_moves_out_of_the_answer_into_refs(raw: str, refs: tuple[str, ...]) -> None:
    assert GATE(raw) == GateResult(LONG, None, refs, ("references",))


def test_a_word_like_source_inside_a_sentence_is_not_a_header() -> None:
    text = "这个梗来源于游戏中的一个角色。References to the novel abound in the game."
    assert GATE(text) == GateResult(text, None, (), ())


# --------------------------------------------------------------------------- material talk


@pytest.mark.parametrize(
    ("raw", "cleaned", "changes"),
    [
        ("根据资料，材料中提到，天命人是猴子。资料显示，他要寻找六根。", "天命人是猴子。他要寻找六根。",
         ("lead_in", "material_rewritten")),
        ("天蓬是猪妖。具体来说，材料中提到：“本是天蓬元帅，被打入凡间。”",
         "天蓬是猪妖。具体来说，“本是天蓬元帅，被打入凡间。”", ("material_rewritten",)),
        (f"以下是根据提供的材料对孙悟空背景故事的一个概述：{LONG}", f"以下是对孙悟空背景故事的一个概述：{LONG}",
         ("material_rewritten",)),
        (f"关于「天命人」：根据知识库记载，{LONG}", f"关于「天命人」：{LONG}", ("material_rewritten",)),
        ("The documents state that the game was released in 2024.", "The game was released in 2024.",
         ("material_rewritten",)),
    ],
)
def test_material_talk_is_rewritten_where_that_is_safe(
    raw: str, cleaned: str, changes: tuple[str, ...]
) -> None:
    assert GATE(raw) == GateResult(cleaned, None, (), changes)


@pytest.mark.parametrize(
    "raw",
    [
        f"{LONG}材料中多次提到孙悟空，例如他的金箍棒。",
        f"{LONG * 3}\n\n- **沙僧**：虽然材料中没有直接提到沙僧，但作为师兄弟，他也会影响孙悟空。",
        f"{LONG} In the documents, the monkey is called the Great Sage.",
    ],
)
def test_material_talk_that_cannot_be_rewritten_rejects_the_answer(raw: str) -> None:
    assert GATE(raw).reason == "material_talk"


def test_material_talk_reject_mode_rejects_even_what_could_be_rewritten() -> None:
    gate = compile_gate(dataclasses.replace(CS, material_talk="reject"))
    assert gate(f"资料显示，{LONG}").reason == "material_talk"
    assert gate(f"根据提供的材料，{LONG}") == GateResult(LONG, None, (), ("lead_in",))  # a lead-in still goes


@pytest.mark.parametrize(
    "text",
    [
        "游戏中的装备可以通过收集材料和锻造来升级。场景参考了真实的寺庙与石刻。",
        "In the context of the novel, armour made from the materials of fallen foes is rare.",
    ],
)
def test_crafting_materials_and_everyday_phrases_are_not_material_talk(text: str) -> None:
    assert GATE(text) == GateResult(text, None, (), ())


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "raw",
    [
        "抱歉，资料中没有关于灵虚子的信息。",
        "对不起，我无法从提供的资料中找到答案。",
        "Sorry, I don't have enough information in the documents to answer that.",
        "The provided documents do not specify this. The game itself was made by Game Science.",
        "I cannot answer this from the given context.",
        # The opening carries the answer: a gap, then guesses.
        "《黑神话：悟空》游戏的难度等级并没有在材料中明确提及。然而，可以推测游戏有一定难度。" + LONG * 4,
        "对不起，您提供的参考材料中并没有提及音乐团队。不过，通常情况下，一款大型游戏的音乐团队会包括作曲家。"
        + LONG * 6,
    ],
)
def test_refusals_in_either_language_are_rejected(raw: str) -> None:
    assert GATE(raw).reason == "refusal"


def test_an_answer_mostly_made_of_refusal_sentences_is_a_refusal_wherever_they_stand() -> None:
    answer = "天命人是主角。不过，资料中没有提到他的年龄。资料中也没有提到他的籍贯和师承门派。"
    assert GATE(answer).reason == "refusal"
    # The share is a setting: at 0.9 the same answer is only material talk.
    assert compile_gate(dataclasses.replace(CS, refusal_share=0.9))(answer).reason == "material_talk"


def test_a_long_answer_noting_one_gap_in_passing_is_kept() -> None:
    text = LONG * 6 + "至于他的结局，原著中并未提及。"
    assert GATE(text) == GateResult(text, None, (), ())


# --------------------------------------------------------------------------- limits and reasons


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("根据提供的材料，", "empty"),
        ("太短了", "too_short"),
        ("根据提供的材料，是猴子。", "too_short"),
        (f"{LONG}<|im_end|>", "template_marker"),
        ("悟" * 4001, "too_long"),
    ],
)
def test_gate_rejects_with_a_reason(raw: str, reason: str) -> None:
    assert GATE(raw).reason == reason
    assert reason in REASONS


def test_length_limits_are_inclusive_settings() -> None:
    ten = "一二三四五六七八九十"
    assert GATE(ten) == GateResult(ten, None, (), ())
    assert GATE(ten[:-1]).reason == "too_short"
    assert compile_gate(dataclasses.replace(CS, min_answer_chars=0))("是。").reason is None
    gate = compile_gate(dataclasses.replace(CS, max_answer_chars=20))
    assert gate("悟" * 20).reason is None
    assert gate("悟" * 21).reason == "too_long"


def test_gate_patterns_come_from_settings() -> None:
    cs = dataclasses.replace(CS, strip_prefixes=(r"^答[:：]\s*",), refusal_patterns=(r"无可奉告",),
                             material_patterns=(), material_rewrites=(), reference_headers=())
    gate = compile_gate(cs)
    assert gate(f"答：{LONG}") == GateResult(LONG, None, (), ("lead_in",))
    assert gate(f"无可奉告。{LONG}").reason == "refusal"
    assert gate(f"根据提供的材料，{LONG}") == GateResult(f"根据提供的材料，{LONG}", None, (), ())


@pytest.mark.parametrize(
    "key", ["strip_prefixes", "refusal_patterns", "material_patterns", "material_rewrites", "reference_headers"]
)
def test_a_bad_pattern_is_a_settings_error_naming_the_key(key: str) -> None:
    with pytest.raises(SettingsError, match=rf"\[conversations\] {key}"):
        parse_settings({"conversations": {key: ["(oops"]}}, source="test", environ={})


@pytest.mark.parametrize(
    ("patterns", "answer", "reason"),
    [
        (["无法回答", "不知道"], "抱歉，我不知道这件事的详细经过与背景。", "refusal"),
        (["无法回答", "不知道"], "天命人手持如意金箍棒，踏上取回六根的旅程。", None),
        # A back-reference, a global flag, a pattern with no certain word: each still works.
        ([r"(无法)\1", "不知道"], "无法无法确定这件事情的经过与背景。", "refusal"),
        ([r"(?i)sorry", "不知道"], "SORRY, the answer is not known to me at all.", "refusal"),
        ([r"\d{3}号", "不知道"], "404号，查无此人，请换一个问题再问。", "refusal"),
    ],
)
def test_refusal_patterns_reject_as_any_one_of_them_would(
    patterns: list[str], answer: str, reason: str | None
) -> None:
    cs = parse_settings({"conversations": {"refusal_patterns": patterns, "min_answer_chars": 5}},
                        source="test", environ={}).conversations
    assert compile_gate(cs)(answer).reason == reason


# --------------------------------------------------------------------------- the prefilter


def test_the_prefilter_finds_every_pattern_a_plain_search_finds() -> None:
    # The words a pattern needs are read from the pattern; a wrong reading
    # would let an answer through unchecked. Compare with plain searches on
    # text made of pieces of the default patterns' own matches, in any case.
    cs = ConversationSettings()
    patterns = [re.compile(p) for p in (*cs.strip_prefixes, *cs.refusal_patterns, *cs.material_patterns,
                                        *cs.material_rewrites, *cs.reference_headers)]
    pieces = ["根据提供的参考材料，", "材料中提到：", "资料显示，", "参考资料", "没有直接提及", "并未在材料中明确说明",
              "无法准确地回答", "抱歉", "不清楚", "According to the provided context, ", "SORRY ",
              "I can't answer ", "not mentioned in the documents", "The documents do not mention it. ",
              "**References:**", "天命人", "。", "\n", "，", "the ", "information ", "在您提供的材料中，"]
    matcher = _Matcher(patterns)
    rng = random.Random(3)
    for _ in range(3000):
        text = "".join(rng.choices(pieces, k=rng.randint(1, 6)))
        text = text.upper() if rng.random() < 0.1 else text
        low = text.lower()
        whose = matcher.patterns_of()
        tried = sorted({i for _, word in matcher.hits(low) for i in whose[word]})
        found = [patterns[i] for i in tried if matcher.needs_met(i, low) and patterns[i].search(text)]
        assert found == [p for p in patterns if p.search(text)], text


def test_tidy_takes_its_shortcut_only_where_the_long_way_changes_nothing() -> None:
    def long_way(text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = re.sub(r"(?<=\S)[ \t\u3000]+", " ", text)
        text = re.sub(r"[ \t]+\n", "\n", text)
        return re.sub(r"\n{3,}", "\n\n", text).strip()

    rng = random.Random(7)
    alphabet = ["天", "命", "a", " ", "\n", "\r", "\t", "\u3000", "\xa0", "。"]
    for _ in range(20_000):
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 12)))
        assert _tidy(text) == long_way(text), repr(text)
