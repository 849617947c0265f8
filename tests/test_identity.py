"""The identity command: the pure checks, and whole runs with the real openai
client against the fake LLM API on 127.0.0.1 (which answers identity prompts
as a model would, slips included: a repeated question, one naming another
model, and every fourth answer claiming to be ChatGPT or DeepSeek)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import run
from pipeline.errors import SettingsError
from pipeline.outputs.identity import load_identity
from pipeline.outputs.validate import validate_file
from pipeline.qa.identity import KINDS, Facts, answer_messages, check_answer, fold, screen_question, targets
from pipeline.qa.identity_stage import run_identity
from pipeline.settings import ConversationSettings, IdentitySettings, Settings, parse_settings
from run import IDENTITY_EXIT, exit_code
from tests.fakes.llm_fixtures import FAKE_KEY, FAKE_KEY_ENV
from tests.fakes.llm_server import Failure, FakeLLM

SYSTEM = "你是小明，由星河工作室开发的AI助手，专注于回答园艺相关的问题。"


def facts(**identity: Any) -> Facts:
    values = {"name": "小明", "author": "星河工作室"} | identity
    return Facts.of(IdentitySettings(**values), ConversationSettings(system_prompt=SYSTEM))


# ---- the pure checks -----------------------------------------------------------


@pytest.mark.parametrize(("answer", "lang", "reason"), [
    ("你好！我是小明，由星河工作室开发的AI助手。", "zh", None),
    ("Hi! I'm 小明, a gardening assistant made by 星河工作室.", "en", None),
    ("I'm 小明, by 星河工作室.", "en", None),
    ("我是DeepSeek，由深度求索公司开发的AI助手。", "zh", "other_identity"),
    ("我是小明，基于通义千问打造。", "zh", "other_identity"),
    ("I am 小明, but really I'm ChatGPT by OpenAI.", "en", "other_identity"),
    ("I'm 小明, built on GPT-4o.", "en", "other_identity"),
    ("你好！我是一个园艺助手。", "zh", "no_name"),
    ("I'm 小明 and I love gardens.", "zh", "wrong_language"),
    ("我是小明，喜欢园艺。", "en", "wrong_language"),
    ("   ", "zh", "empty"),
    ("我是小明<|im_end|>", "zh", "template_marker"),
    ("我是小明。" + "园艺" * 300, "zh", "too_long"),
])
def test_an_answer_must_say_the_name_and_no_other_model_or_company(
    answer: str, lang: str, reason: str | None
) -> None:
    assert check_answer(answer, facts(), lang, 400) == reason


def test_other_names_match_whole_words_and_the_settings_own_names_are_allowed() -> None:
    f = facts(name="Bingo")
    assert f.other_name_in("I'm Bingo from Binghamton.") is None  # neither is "Bing"
    assert f.other_name_in("Powered by Bing.") == "Bing"
    # An assistant its settings say was made by Alibaba may say so; others may not.
    ali = facts(author="Alibaba Cloud")
    assert check_answer("I'm 小明, made by Alibaba Cloud.", ali, "en", 400) is None
    assert check_answer("I'm 小明, made by Alibaba Cloud.", facts(), "en", 400) == "other_identity"
    # The user's own list counts too.
    assert facts(other_names=("Acme Bot",)).other_name_in("我是小明，不是Acme Bot。") == "Acme Bot"


def test_questions_are_screened_and_a_greeting_need_not_be_a_question() -> None:
    f = facts()
    assert screen_question("你好呀！", f, "zh", 60) is None
    assert screen_question("Hello there!", f, "en", 60) is None
    assert screen_question("你和ChatGPT有什么区别？", f, "zh", 60) == "other_identity"
    assert screen_question("Who are you?", f, "zh", 60) == "wrong_language"
    assert screen_question("你是谁？" * 20, f, "zh", 60) == "too_long"
    assert screen_question("Hey, hello there!', 'Hey, who's this?", f, "en", 60) == "glued"
    assert screen_question("What's your name, and who's \"Ming\"?", f, "en", 60) is None


def test_targets_spread_the_records_over_languages_then_kinds() -> None:
    want = targets(("zh", "en"), 13)
    assert sum(want.values()) == 13
    assert sum(n for (lang, _), n in want.items() if lang == "zh") == 7
    assert [want[("en", k)] for k in KINDS] == [2, 1, 1, 1, 1]


def test_the_answer_prompt_carries_the_system_prompt_and_the_facts() -> None:
    system, user = answer_messages(facts(purpose="帮人种花"), "en", "Who are you?", 300)
    assert system["content"].startswith(SYSTEM)
    assert "your name is 小明" in system["content"] and "made by 星河工作室" in system["content"]
    assert "your purpose: 帮人种花" in system["content"]
    assert user == {"role": "user", "content": "Who are you?"}
    # With the purpose left to the system prompt, the prompt does not say it twice.
    zh = answer_messages(facts(purpose=SYSTEM), "zh", "你是谁？", 300)[0]["content"]
    assert zh.count(SYSTEM) == 1


def test_an_answer_accepted_earlier_is_checked_again_against_todays_name() -> None:
    rows = [{"type": "question", "id": "q1", "lang": "zh", "kind": "who", "text": "你是谁？"},
            {"type": "answer", "id": "q1", "text": "我是小明。", "tokens": [10, 5]}]
    assert fold(rows, facts(), 400).accepted()[0].answer == "我是小明。"
    renamed = fold(rows, facts(name="小红"), 400)
    assert renamed.accepted() == []
    assert renamed.questions["q1"].reasons == ["no_name"]
    assert renamed.tokens == [10, 5]


# ---- whole runs against the fake -------------------------------------------------


def make_settings(tmp_path: Path, fake: FakeLLM, **identity: Any) -> Settings:
    data: dict[str, Any] = {
        "paths": {"data_dir": str(tmp_path / "data"), "out_dir": str(tmp_path / "out")},
        "llm": {"base_url": fake.base_url, "model": "fake-model", "api_key_env": FAKE_KEY_ENV,
                "timeout_s": 10, "max_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
                "rpm": 100_000, "tpm": 100_000_000, "price_input_per_m": 1.0, "price_output_per_m": 2.0},
        "conversations": {"system_prompt": SYSTEM},
        "identity": {"name": "小明", "author": "星河工作室", "records": 20, "batch_size": 6} | identity,
    }
    return parse_settings(data, source="test.toml", environ={FAKE_KEY_ENV: FAKE_KEY})


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",), shape="mixed") as fake:
        yield fake


def records(settings: Settings) -> list[dict[str, Any]]:
    path = settings.out_dir / settings.identity.output_name
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def is_zh(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text.replace("小明", "").replace("星河工作室", ""))


async def test_a_run_makes_every_record_in_the_assistants_voice(llm: FakeLLM, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, llm)
    result = await run_identity(settings, install_signals=False)
    assert (result.status, exit_code(result.status, IDENTITY_EXIT), result.records) == ("complete", 0, 20)
    made = records(settings)
    assert len(made) == 20
    questions = [r["conversation"][0]["input"] for r in made]
    assert len(set(questions)) == 20
    for r in made:
        (turn,) = r["conversation"]
        assert turn["system"] == SYSTEM
        assert "小明" in turn["output"]
        assert not any(other in turn["output"] for other in ("DeepSeek", "深度求索", "ChatGPT", "OpenAI"))
        assert is_zh(turn["input"]) == is_zh(turn["output"])
    assert sum(is_zh(q) for q in questions) == 10
    # The fake slipped (every 4th answer claimed another model); those were refused and asked again.
    served = [m for m in llm.requests if "关于你自己" in m[0]["content"] or "About yourself" in m[0]["content"]]
    assert len(served) == 20 + len(served) // 4
    state = load_identity(settings)
    assert sum(len(q.reasons) for q in state.questions.values()) == len(served) // 4
    # Questions naming another model, and the repeats, never got an answer request.
    assert not any("ChatGPT" in m[-1]["content"] or "Claude" in m[-1]["content"] for m in served)
    assert state.dropped["other_identity"] >= 1 and state.dropped["duplicate"] >= 1
    report = validate_file(settings.out_dir / "identity.jsonl")
    assert (report.errors, report.warnings, report.records) == ([], [], 20)
    # The report says it all.
    section = json.loads((settings.out_dir / "report.json").read_text(encoding="utf-8"))["identity"]
    assert section["records"] == 20 and section["rejected_answers"] == {"other_identity": len(served) // 4}
    assert "## Identity records" in (settings.out_dir / "report.md").read_text(encoding="utf-8")


async def test_a_rerun_of_a_finished_job_makes_no_request(llm: FakeLLM, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, llm, records=10)
    await run_identity(settings, install_signals=False)
    first = (settings.out_dir / "identity.jsonl").read_bytes()
    calls, listed = llm.calls, llm.model_list_calls
    again = await run_identity(settings, install_signals=False)
    assert (again.status, again.records) == ("complete", 10)
    assert (llm.calls, llm.model_list_calls) == (calls, listed)
    assert (settings.out_dir / "identity.jsonl").read_bytes() == first
    # More records wanted: only the new ones are paid for.
    more = make_settings(tmp_path, llm, records=14)
    answers_before = sum(1 for m in llm.requests if "关于你自己" in m[0]["content"]
                         or "About yourself" in m[0]["content"])
    assert (await run_identity(more, install_signals=False)).records == 14
    asked = [m[-1]["content"] for m in llm.requests[calls:]
             if "关于你自己" in m[0]["content"] or "About yourself" in m[0]["content"]]
    assert not set(asked) & {r["conversation"][0]["input"] for r in
                             (orjson.loads(x) for x in first.splitlines())}
    assert answers_before  # the first run did answer


async def test_quota_stops_with_75_keeps_what_was_made_and_the_rerun_goes_on(
    llm: FakeLLM, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, llm)
    llm.quota_after = 12
    stopped = await run_identity(settings, install_signals=False)
    assert (stopped.status, exit_code(stopped.status, IDENTITY_EXIT)) == ("quota", 75)
    assert "run `python run.py --settings test.toml identity` again" in stopped.line()
    kept = records(settings)
    assert 0 < len(kept) < 20 and stopped.records == len(kept)
    llm.quota_after = None
    done = await run_identity(settings, install_signals=False)
    assert (done.status, done.records) == ("complete", 20)
    assert records(settings)[: len(kept)] == kept


async def test_a_slot_the_llm_runs_dry_on_still_answers_the_questions_it_has(
    llm: FakeLLM, tmp_path: Path
) -> None:
    # Every question-writing call brings the same three questions: the first
    # slot to ask takes them (3 of its 4), the others get only repeats.
    def responder(messages: list[dict[str, str]]) -> str:
        if "About yourself" in messages[0]["content"]:
            return llm.default_responder(messages)
        return '["Who are you?", "What is your name?", "Tell me about yourself."]'

    llm.responder, llm.identity_slip_every = responder, 0
    settings = make_settings(tmp_path, llm, records=20, languages=["en"])
    result = await run_identity(settings, install_signals=False)
    assert (result.status, result.records) == ("short", 3)
    assert "3/4: the LLM wrote no new usable question in 3 calls in a row" in result.line()
    assert result.line().count("0/4: the LLM wrote no new usable question") == 4


async def test_a_model_that_never_says_who_it_is_falls_short_and_says_why(
    llm: FakeLLM, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, llm, records=5, languages=["en"], max_attempts=2)
    llm.identity_slip_every = 1  # every answer claims to be ChatGPT
    result = await run_identity(settings, install_signals=False)
    assert (result.status, exit_code(result.status, IDENTITY_EXIT), result.records) == ("short", 0, 0)
    line = result.line()
    assert "identity short: 0/5 records" in line
    assert "en/who: 0/1: 1 questions given up after 2 rejected answers each (other_identity 2)" in line
    assert records(settings) == []


async def test_a_stop_keeps_every_answer_received(llm: FakeLLM, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, llm)
    answered = 0
    held = asyncio.Event()

    def responder(messages: list[dict[str, str]]) -> str:
        # After six answers, hold every later request until the stop.
        nonlocal answered
        text = llm.default_responder(messages)
        if "关于你自己" in messages[0]["content"] or "About yourself" in messages[0]["content"]:
            answered += 1
            if answered == 6:
                llm.gate = asyncio.Event()
                held.set()
        return text

    llm.responder = responder
    work: list[asyncio.Task[None]] = []
    running = asyncio.create_task(run_identity(settings, install_signals=False, on_start=work.append))
    await held.wait()
    await llm.wait_in_flight(1)
    work[0].cancel()
    result = await running
    assert (result.status, exit_code(result.status, IDENTITY_EXIT)) == ("interrupted", 130)
    assert "run `python run.py --settings test.toml identity` again to resume" in result.line()
    kept = records(settings)
    assert 1 <= len(kept) == len(load_identity(settings).accepted()) < 20
    # The rerun asks no question already answered.
    llm.gate.set()
    llm.gate, llm.responder = None, None
    start = len(llm.requests)
    assert (await run_identity(settings, install_signals=False)).records == 20
    asked = {m[-1]["content"] for m in llm.requests[start:]}
    assert not asked & {r["conversation"][0]["input"] for r in kept}


def test_the_name_is_required(tmp_path: Path) -> None:
    settings = parse_settings({"paths": {"out_dir": str(tmp_path)}}, source="s.toml",
                              environ={"SILICONFLOW_API_KEY": "k"})
    with pytest.raises(SettingsError, match=r"s.toml: \[identity\] name: set the assistant's name"):
        asyncio.run(run_identity(settings, install_signals=False))


def test_languages_must_be_known_and_given_once() -> None:
    with pytest.raises(SettingsError, match=r"\[identity\] languages"):
        parse_settings({"identity": {"languages": ["zh", "fr"]}})
    with pytest.raises(SettingsError, match=r"\[identity\] languages: each language once"):
        parse_settings({"identity": {"languages": ["en", "en"]}})
    with pytest.raises(SettingsError, match=r"\[identity\] output_name: expected a plain file name"):
        parse_settings({"identity": {"output_name": "../identity.jsonl"}})


async def test_the_command_line_runs_it_and_export_registers_it_beside_the_conversations(
    llm: FakeLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(
        f'[paths]\nout_dir = "{tmp_path / "out"}"\n'
        f'[llm]\nbase_url = "{llm.base_url}"\nmodel = "fake-model"\napi_key_env = "{FAKE_KEY_ENV}"\nrpm = 100000\n'
        f'[conversations]\nsystem_prompt = "{SYSTEM}"\n'
        '[identity]\nname = "小明"\nrecords = 6\nlanguages = ["en"]\n', encoding="utf-8")
    monkeypatch.setenv(FAKE_KEY_ENV, FAKE_KEY)
    code = await asyncio.to_thread(run.main, ["--settings", str(settings_file), "identity"])
    assert code == 0
    assert capsys.readouterr().out.startswith(f"identity complete: 6/6 records in {tmp_path / 'out' / 'identity.jsonl'}")
    assert run.main(["--settings", str(settings_file), "validate", str(tmp_path / "out" / "identity.jsonl")]) == 0
    argv = ["--settings", str(settings_file), "export", "--format", "sharegpt", "--input",
            str(tmp_path / "out" / "identity.jsonl")]
    assert run.main(argv) == 0
    info = json.loads((tmp_path / "out" / "export" / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["identity_sharegpt"]["file_name"] == "identity_sharegpt.jsonl"


async def test_refusals_and_reasoning_are_handled_per_answer(llm: FakeLLM, tmp_path: Path) -> None:
    # The first question-writing call refused by the provider's filter (twice: the
    # client tries once more), then every reply wrapped in reasoning.
    llm.script(Failure.refusal("deepseek"), Failure.refusal("deepseek"))
    llm.think = "closed"
    settings = make_settings(tmp_path, llm, records=1, languages=["en"])  # one call at a time
    result = await run_identity(settings, install_signals=False)
    assert (result.status, result.records) == ("complete", 1)
    assert not any("<think>" in r["conversation"][0]["output"] or "draft" in r["conversation"][0]["output"]
                   for r in records(settings))
    assert load_identity(settings).dropped["reply_refused"] == 1


async def test_the_file_follows_the_settings_when_they_ask_for_less(llm: FakeLLM, tmp_path: Path) -> None:
    await run_identity(make_settings(tmp_path, llm), install_signals=False)
    calls = llm.calls
    fewer = make_settings(tmp_path, llm, records=6, languages=["en"])
    result = await run_identity(fewer, install_signals=False)
    assert (result.status, result.records, llm.calls) == ("complete", 6, calls)
    made = records(fewer)
    assert len(made) == 6 and not any(is_zh(r["conversation"][0]["input"]) for r in made)


async def test_a_refused_key_mid_run_stops_with_the_error_and_keeps_the_records(
    llm: FakeLLM, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, llm)
    answered = 0

    def responder(messages: list[dict[str, str]]) -> str:
        # The key is revoked after the sixth answer.
        nonlocal answered
        if "关于你自己" in messages[0]["content"] or "About yourself" in messages[0]["content"]:
            answered += 1
            if answered == 6:
                llm.api_key = "revoked"
        return llm.default_responder(messages)

    llm.responder = responder
    with pytest.raises(ExceptionGroup) as caught:
        await run_identity(settings, install_signals=False)
    assert "check the key in $FAKE_LLM_API_KEY" in str(caught.value.exceptions[0])
    kept = records(settings)
    assert 1 <= len(kept) <= 6
    assert all("小明" in r["conversation"][0]["output"] for r in kept)
