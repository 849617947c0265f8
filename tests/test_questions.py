"""Question-stage transforms: prompts, parsing model output, screening, ids, follow-ups."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.presets import PRESETS
from pipeline.qa.questions import (
    followup_candidates,
    fill_template,
    followup_messages,
    normalise,
    parse_question_list,
    question_id,
    question_messages,
    screen_question,
    standalone_question,
)
from pipeline.settings import QuestionSettings, parse_settings

A, B = "天命人是谁？", "游戏中有几种棍法？"


# --------------------------------------------------------------------------- prompts


def questions(**values: object) -> QuestionSettings:
    """[questions] as the settings loader makes them: empty prompts take the language preset."""
    return parse_settings({"questions": values}).questions


def test_question_messages_fill_topic_aspect_and_n_from_the_preset() -> None:
    qs = questions(topic="黑神话：悟空")
    msgs = question_messages(qs, "战斗系统", 10)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "《黑神话：悟空》的战斗系统方面" in msgs[0]["content"]
    assert msgs[1]["content"] == "请针对《黑神话：悟空》的「战斗系统」提出10个不同的问题。"


def test_question_messages_leave_literal_braces_and_unknown_placeholders_alone() -> None:
    qs = questions(
        topic="Wukong",
        system_prompt='Reply as JSON like {"questions": [...]} about {topic}; {unknown} stays.',
        user_prompt="Give {n} questions on {aspect}, {{escaped}}.",
    )
    system, user = (m["content"] for m in question_messages(qs, "combat", 3))
    assert system == 'Reply as JSON like {"questions": [...]} about Wukong; {unknown} stays.'
    assert user == "Give 3 questions on combat, {escaped}."


def test_later_batches_are_shown_accepted_questions_and_asked_for_different_ones() -> None:
    qs = questions()
    first = question_messages(qs, "主要角色", 10)
    later = question_messages(qs, "主要角色", 10, accepted_sample=[A, B])
    assert "已经问过" not in first[1]["content"]
    assert later[1]["content"].startswith(first[1]["content"])
    assert f"- {A}\n- {B}" in later[1]["content"]


def test_english_preset_is_used_for_language_en() -> None:
    qs = questions(topic="Black Myth: Wukong", language="en")
    msgs = question_messages(qs, "combat", 5, accepted_sample=["Who is the Destined One?"])
    assert msgs[1]["content"].startswith("Write 5 different questions about the combat of Black Myth: Wukong.")
    assert "write different ones" in msgs[1]["content"]


def test_a_placeholder_value_is_not_itself_expanded() -> None:
    assert fill_template("{question}/{answer}", {"question": "{answer}", "answer": "x"}) == "{answer}/x"


def test_followup_messages_carry_the_last_question_and_answer() -> None:
    cs = parse_settings({}).conversations
    (msg,) = followup_messages(cs, "黑神话：悟空", "天命人是谁？", "玩家扮演的角色。")
    assert "《黑神话：悟空》" in msg["content"]
    assert msg["content"].endswith("问题：天命人是谁？\n回答：玩家扮演的角色。")


def test_an_english_run_asks_for_follow_ups_with_the_english_preset() -> None:
    cs = parse_settings({"questions": {"language": "en"}}).conversations
    (msg,) = followup_messages(cs, "home brewing", "What is wort?", "Unfermented beer.")
    en = fill_template(PRESETS["en"].followup, {"topic": "home brewing", "question": "What is wort?",
                                                 "answer": "Unfermented beer."})
    assert msg["content"] == en


# --------------------------------------------------------------------------- parsing

SHAPES = {
    "json list": f'["{A}", "{B}"]',
    "json list multi-line": f'[\n  "{A}",\n  "{B}"\n]',
    "python list": f"['{A}', '{B}']",
    "python list, trailing comma": f"['{A}', '{B}',]",
    "tuple-ish nested list": f"[['{A}', '{B}']]",
    "fenced json": f'```json\n["{A}", "{B}"]\n```',
    "fenced python": f"```python\n['{A}', '{B}']\n```",
    "fenced no language": f"```\n['{A}', '{B}']\n```",
    "chatty around the list": f"好的，以下是10个问题：\n['{A}', '{B}']\n希望对你有帮助！",
    "bracket in preamble": f"以下是[主要角色]方面的问题：\n['{A}', '{B}']",
    "object wrapping a list": f'{{"questions": ["{A}", "{B}"]}}',
    "list of dicts": f'[{{"question": "{A}"}}, {{"question": "{B}"}}]',
    "list of dicts, other key": f'[{{"id": 1, "问题": "{A}"}}, {{"id": 2, "问题": "{B}"}}]',
    "full-width brackets and quotes": f"［'{A}'，'{B}'］",
    "lenticular brackets, curly quotes": f"【“{A}”，“{B}”】",
    "corner quotes": f"[「{A}」, 「{B}」]",
    "white corner quotes": f"[『{A}』、『{B}』]",
    "single curly quotes": f"[‘{A}’, ‘{B}’]",
    "numbered dot": f"1. {A}\n2. {B}",
    "numbered ideographic comma": f"1、{A}\n2、{B}",
    "numbered paren": f"1) {A}\n2) {B}",
    "numbered full-width paren": f"（1）{A}\n（2）{B}",
    "numbered ascii paren": f"(1) {A}\n(2) {B}",
    "numbered full-width digits": f"１．{A}\n２．{B}",
    "Q-numbered": f"Q1: {A}\nQ2: {B}",
    "问题-numbered": f"问题1：{A}\n问题2：{B}",
    "第n个": f"第1个：{A}\n第2个：{B}",
    "Chinese numerals": f"一、{A}\n二、{B}",
    "dash bullets": f"- {A}\n- {B}",
    "star bullets": f"* {A}\n* {B}",
    "dot bullets": f"• {A}\n· {B}",
    "bold numbered": f"**1. {A}**\n**2. {B}**",
    "numbered and quoted": f'1. "{A}"\n2. "{B}"',
    "numbered with chat around": f"当然可以！\n\n1. {A}\n2. {B}\n\n希望这些问题对你有帮助。",
    "numbered items inside a list": f'["1. {A}", "2. {B}"]',
    "plain question lines": f"{A}\n{B}",
    "plain lines with chat": f"好的，问题如下：\n{A}\n{B}\n希望对你有帮助！",
    "one line, several questions": f"{A}{B}",
    "one line, separated by spaces": f"{A} {B}",
    "cut off at max_tokens, one line": f'["{A}", "{B}", "游戏里的',
    "cut off at max_tokens, multi-line": f'[\n  "{A}",\n  "{B}",\n  "游戏里的',
    "unclosed python list": f"['{A}', '{B}'",
    "CRLF numbered": f"1. {A}\r\n2. {B}\r\n",
    "number list in preamble": f"以下是[2]个问题：\n1. {A}\n2. {B}",
}


@pytest.mark.parametrize("text", SHAPES.values(), ids=SHAPES.keys())
def test_parse_question_list_reads_every_common_shape(text: str) -> None:
    assert parse_question_list(text) == [A, B]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('["「天命人」是谁？", "黑熊精在哪？"]', ["「天命人」是谁？", "黑熊精在哪？"]),
        ("1. 「天命人」是谁？", ["「天命人」是谁？"]),
        ("x是“天命人”吗？", ["x是“天命人”吗？"]),
        ("['2024年发售了什么？', '3.5版本有什么？']", ["2024年发售了什么？", "3.5版本有什么？"]),
        ("1. 3.5版本有什么？\n2. 谁是二郎神？", ["3.5版本有什么？", "谁是二郎神？"]),
        ("['What's the story?', 'Who is Wukong?']", ["What's the story?", "Who is Wukong?"]),
        (
            "Sure! Here are the questions:\n1) What is Wukong?\n2) Who made it?\nHope this helps!",
            ["What is Wukong?", "Who made it?"],
        ),
        ('["Who is \\"the Destined One\\"?"]', ['Who is "the Destined One"?']),
        ("['金箍棒(如意棒)有何来历？']", ["金箍棒(如意棒)有何来历？"]),
    ],
)
def test_parse_question_list_keeps_quotes_numbers_and_apostrophes_that_belong_to_the_text(
    text: str, expected: list[str]
) -> None:
    assert parse_question_list(text) == expected


@pytest.mark.parametrize("text", ["", "   \n", "[]", "```json\n[]\n```", "[1, 2, 3]"])
def test_parse_question_list_invents_nothing_from_empty_replies(text: str) -> None:
    assert parse_question_list(text) == []


def test_parse_question_list_never_evaluates_code() -> None:
    text = "[__import__('os').system('echo pwned'), '天命人是谁？']"
    # Not a literal: nothing is executed and the call is not returned as a question.
    assert all("__import__" not in q for q in parse_question_list(text))


def test_parse_question_list_keeps_model_order() -> None:
    qs = [f"第{i}个妖王是谁？" for i in range(1, 21)]
    assert parse_question_list(str(qs)) == qs


def _random_list_texts(n: int, seed: int) -> list[str]:
    """Bracketed texts mixing the parser's hard cases: quotes of both kinds,
    backslashes, nested and full-width brackets, separators, line breaks."""
    import random

    rng = random.Random(seed)
    pieces = ["'", '"', "\\", "[", "]", "［", "］", "【", "】", ",", "，", ";", " ", "\n", "\r",
              "\0", "#", "天命人", "what's", "a", "？", "u", "'" * 3, "“", "”"]
    return ["[" + "".join(rng.choices(pieces, k=rng.randint(0, 14))) + "]" for _ in range(n)]


def test_plain_quoted_items_agree_with_literal_eval_wherever_they_answer() -> None:
    import ast

    from pipeline.qa.questions import _plain_quoted_items

    import random

    rng = random.Random(5)
    words = ["天命人是谁？", "what's this", 'say "hi"', "", " a ", "\t", "；", "[x]", "#"]
    quoted = [q + w + q for w in words for q in "'\"" if q not in w]
    gaps = [",", ", ", " ,", ",\n", " ", "", ";", "，", ", #c\n", ",,"]
    lists = ["[" + "".join(rng.choice(quoted) + rng.choice(gaps) for _ in range(rng.randint(0, 4)))
             + rng.choice(quoted) + rng.choice(["", ",", " "]) + "]" for _ in range(10_000)]
    answered = 0
    spans = _random_list_texts(30_000, seed=3) + lists + [
        "['a', 'b']", "['a' , \"b\",]", "['a'\n, 'b']", "['a' 'b']", "['''a''']", "[u'a']"]
    for span in spans:
        try:
            fast = _plain_quoted_items(span)
        except ValueError:
            continue
        answered += 1
        assert fast == ast.literal_eval(span), span
    assert answered > 1000


def test_matching_close_skips_quoted_and_escaped_brackets_as_a_char_scan_does() -> None:
    from pipeline.qa.questions import _CLOSE_OF, _matching_close

    def reference(text: str, start: int) -> int:
        closer, depth, quote, i = _CLOSE_OF[text[start]], 0, None, start
        while i < len(text):
            ch = text[i]
            if quote is not None:
                if ch == "\\":
                    i += 1
                elif ch == quote:
                    quote = None
            elif ch in "\"'":
                quote = ch
            elif ch == text[start]:
                depth += 1
            elif ch == closer:
                depth -= 1
                if depth == 0:
                    return i
            i += 1
        return -1

    for text in _random_list_texts(30_000, seed=4):
        for start in (i for i, ch in enumerate(text) if ch in "[［【"):
            assert _matching_close(text, start) == reference(text, start), (text, start)


# --------------------------------------------------------------------------- screening

QS = QuestionSettings(min_chars=4, max_chars=30)
EN = QuestionSettings(language="en", min_words=3, max_words=20)


@pytest.mark.parametrize(
    ("q", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("谁？", "too_short"),
        ("游戏" * 14 + "是什么？", "too_long"),
        ("这是一个陈述句。", "not_a_question"),
        ("<|im_end|>天命人是谁？", "template_marker"),
        ("天命人是谁<|im_start|>？", "template_marker"),
        ("天命人是谁？", None),
        ("游戏的主角叫什么名字", None),
        ("介绍一下游戏的战斗系统", None),
        ("黑熊精的住处在哪里", None),
        ("游戏好玩吗", None),
        ("DLC什么时候发售？", None),
        # A zh run screens out questions in another language.
        ("Who made the game?", "wrong_language"),
        ("ゲームの主人公は誰ですか？", "wrong_language"),
    ],
)
def test_screen_question_gives_a_stable_reason(q: str, reason: str | None) -> None:
    assert screen_question(q, QS) == reason


@pytest.mark.parametrize(
    ("q", "reason"),
    [
        ("Wukong is a game.", "not_a_question"),
        ("How does combat work", None),
        ("is the game open world", None),
        ("Who made the game?", None),
        # Realistic English questions are longer than 60 characters: words count.
        ("Which yeast strain gives the cleanest fermentation for a dry Irish stout at home?", None),
        ("What temperature should the mash rest at for a full-bodied sweet stout, and for how long?", None),
        ("Why?", "too_short"),
        (" ".join(["word"] * 21) + "?", "too_long"),
        ("游戏的主角叫什么名字？", "wrong_language"),
        ("What does 天命人 mean?", None),
    ],
)
def test_an_english_run_measures_words_and_screens_other_scripts(q: str, reason: str | None) -> None:
    assert screen_question(q, EN) == reason


def test_screen_question_bounds_are_inclusive() -> None:
    qs = dataclasses.replace(QS, min_chars=4, max_chars=6)
    assert screen_question("一二三？", qs) is None
    assert screen_question("一二三四五？", qs) is None
    assert screen_question("一二三四五六？", qs) == "too_long"


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("天命人是谁？", "天命人是谁?"),
        ("天命人是谁？", " 天命人 是谁 ？ "),
        ("《黑神话：悟空》的主角是谁？", "黑神话悟空的主角是谁"),
        ("ＡＢＣ是什么？", "abc是什么?"),
        ("What is Wukong?", "what is wukong"),
        ("“天命人”是谁？", '"天命人"是谁？'),
    ],
)
def test_normalise_and_id_ignore_width_case_spaces_and_punctuation(a: str, b: str) -> None:
    assert normalise(a) == normalise(b)
    assert question_id(a) == question_id(b)


def test_normalise_is_nfkc_then_casefold_then_only_word_characters() -> None:
    # normalise swaps common full-width punctuation for its NFKC form before
    # NFKC (a shortcut); ids are stored, so the result must stay exactly the
    # plain definition, also next to combining marks, jamo and other widths.
    import random
    import re
    import unicodedata

    def reference(q: str) -> str:
        return re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", q).casefold())

    pool = ("？：，（）！?:,()!　ＡＢｅé\u0301\u0308\u0327\u3099ｶﾞがか\u1100\u1161\u11a8ㄱㅏ"
            "ﾡﾠ天命人悟空①㈠ﬁẞΣσς《》“”、。 eEaA1１")
    rng = random.Random(7)
    texts = ["".join(rng.choices(pool, k=rng.randint(0, 12))) for _ in range(20_000)]
    assert [normalise(t) for t in texts] == [reference(t) for t in texts]


def test_question_id_is_a_fixed_16_hex_digest_and_distinguishes_questions() -> None:
    # Fixed value: ids are stored in ledgers, so they must not change between
    # processes or releases.
    assert question_id("天命人是谁？") == question_id("天命人是谁")
    assert len(question_id("天命人是谁？")) == 16
    assert question_id("天命人是谁？") == "54542c566fc45722"
    assert question_id("天命人是谁？") != question_id("天命人在哪？")


# --------------------------------------------------------------------------- follow-ups


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("那么大圣的残躯在哪里？", "那么大圣的残躯在哪里？"),
        ("追问：大圣的残躯在哪里？", "大圣的残躯在哪里？"),
        ("追问: 大圣的残躯在哪里？", "大圣的残躯在哪里？"),
        ("“大圣的残躯在哪里？”", "大圣的残躯在哪里？"),
        ("1. 大圣的残躯在哪里？", "大圣的残躯在哪里？"),
        ("好的，这是一个更深入的追问：\n大圣的残躯在哪里？", "大圣的残躯在哪里？"),
        ("**追问：** 大圣的残躯在哪里？", "大圣的残躯在哪里？"),
        ("Follow-up question: Where are the relics?", "Where are the relics?"),
        ("```\n大圣的残躯在哪里？\n```", "大圣的残躯在哪里？"),
        ('{"question": "大圣的残躯在哪里？"}', "大圣的残躯在哪里？"),
        ('{"follow_up": "Where are the relics?", "reason": "deeper"}', "Where are the relics?"),
        ('```json\n{"追问": "大圣的残躯在哪里？"}\n```', "大圣的残躯在哪里？"),
        ('["大圣的残躯在哪里？", "六根是什么？"]', "大圣的残躯在哪里？"),
        ("['大圣的残躯在哪里？']", "大圣的残躯在哪里？"),
        ("1. 大圣的残躯在哪里？\n2. 六根是什么？", "大圣的残躯在哪里？"),
        ("我没有更多问题了。", None),
        ("", None),
    ],
)
def test_followups_are_parsed_like_question_lists(text: str, expected: str | None) -> None:
    found = followup_candidates(text)
    assert (found[0] if found else None) == expected
    assert not any(c in (found[0] if found else "") for c in "[]{}\"")


@pytest.mark.parametrize(
    ("question", "topic", "language", "sent"),
    [
        ("石猴的师父是谁？", "黑神话：悟空", "zh", "关于《黑神话：悟空》，石猴的师父是谁？"),
        ("石猴的师父是谁？", "《黑神话：悟空》", "zh", "关于《黑神话：悟空》，石猴的师父是谁？"),
        ("黑神话悟空中石猴的师父是谁？", "黑神话：悟空", "zh", "黑神话悟空中石猴的师父是谁？"),
        ("Which yeast suits a stout?", "home brewing", "en", "About home brewing: Which yeast suits a stout?"),
        ("How long does home brewing take?", "home brewing", "en", "How long does home brewing take?"),
        ("他是谁？", "", "zh", "他是谁？"),
    ],
)
def test_the_server_gets_a_standalone_question(question: str, topic: str, language: str, sent: str) -> None:
    assert standalone_question(question, topic, language) == sent


def test_presets_exist_for_both_languages() -> None:
    # The question module formats these; a missing placeholder would silently drop context.
    for preset in PRESETS.values():
        assert "{examples}" in preset.avoid
        assert "{question}" in preset.followup and "{answer}" in preset.followup
