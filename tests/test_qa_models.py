"""The QA stage against what real models and providers send back (issue 12):
reasoning in the reply, replies with nothing usable, content-safety refusals,
follow-ups in every shape, other languages, a key that cannot be a header.
The real openai and aiohttp clients run against the fakes on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from pipeline.outputs.status import build_status, render_status
from pipeline.store.view import open_ledgers, state_from_ledgers
from pipeline.outputs.validate import validate_file
from pipeline.qa.stage import run_qa
from pipeline.settings import Settings
from run import exit_code
from tests.fakes.huixiangdou_server import FakeHuixiangdou
from tests.fakes.llm_fixtures import FAKE_KEY
from tests.fakes.llm_server import Failure, FakeLLM
from tests.test_qa import llm  # noqa: F401 - the fixture
from tests.test_qa import make_settings as qa_settings
from tests.fakes.loops import BOTH_LOOPS

pytestmark = BOTH_LOOPS

ROOT = Path(__file__).resolve().parents[1]
FOLLOWUP = re.compile(r"追问|follow-up", re.IGNORECASE)


# Stands in for a HuixiangDou server where the local backend answers: never called.
NO_SERVER = SimpleNamespace(url="http://127.0.0.1:9")


def make_settings(tmp_path: Path, fake: FakeLLM, hxd: Any, **sections: dict[str, Any]) -> Settings:
    """test_qa's settings on one server, two aspects of three questions, and
    give-ups after two empty rounds."""
    data: dict[str, dict[str, Any]] = {
        "llm": {"max_retries": 1},
        "questions": {"aspects": ["战斗系统", "主要角色"], "per_aspect": 3, "batch_size": 3,
                      "max_stale_rounds": 2},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return qa_settings(tmp_path, fake, [hxd], **data)


def answer_followups_with(llm: FakeLLM, reply: str) -> None:
    """Follow-up prompts get ``reply``; the rest the fake's usual answers."""
    default = llm.default_responder
    llm.responder = lambda messages: reply if FOLLOWUP.search(messages[-1]["content"]) else default(messages)


@pytest.fixture
async def hxd() -> AsyncIterator[FakeHuixiangdou]:
    async with FakeHuixiangdou(seed=1) as server:
        yield server


def rows(settings: Settings, name: str) -> list[dict[str, Any]]:
    path = settings.state_dir / f"{name}.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def report(settings: Settings) -> dict[str, Any]:
    return json.loads((settings.out_dir / "report.json").read_text(encoding="utf-8"))


def status_text(settings: Settings) -> str:
    with open_ledgers(settings.state_dir) as ledgers:
        state = state_from_ledgers(settings, ledgers)
        return render_status(build_status(settings, ledgers, state, None))


def every_text(settings: Settings) -> str:
    texts = [q["text"] for q in rows(settings, "questions")]
    texts += [f"{a['question']}\n{a['answer']}" for a in rows(settings, "answers")]
    texts.append((settings.out_dir / "conversations.jsonl").read_text(encoding="utf-8"))
    return "\n".join(texts)


# ---- 1. reasoning models ------------------------------------------------------------


@pytest.mark.parametrize("style", ["closed", "close_only"])
async def test_reasoning_never_becomes_data(tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou, style: str) -> None:
    llm.think = style  # every reply: a draft list, a draft follow-up, the marker, then the answer
    settings = make_settings(tmp_path, llm, hxd, conversations={"min_turns": 2, "max_turns": 2})
    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete", result.line()
    assert result.stats["accepted"] == 6
    text = every_text(settings)
    assert "草稿" not in text and "think>" not in text and "NOT_IN_MATERIAL" not in text
    followups = [q["text"] for q in rows(settings, "questions") if "conv" in q]
    assert len(followups) == 6 and all(f.endswith("？") for f in followups)
    assert validate_file(settings.out_dir / "conversations.jsonl").errors == []


@pytest.mark.parametrize("endpoint", ["inference", "stream"])
async def test_reasoning_from_the_servers_own_model_is_not_data(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou, endpoint: str
) -> None:
    hxd.think = True
    settings = make_settings(tmp_path, llm, hxd, huixiangdou={"endpoint": endpoint})
    result = await run_qa(settings, install_signals=False)
    assert result.status == "complete" and result.stats["outcomes"] == {"answered": 6}
    dataset = (settings.out_dir / "conversations.jsonl").read_text(encoding="utf-8")
    assert "think>" not in dataset and "草稿" not in dataset
    assert all("<think>" in a["raw_answer"] for a in rows(settings, "answers")), "kept raw, as it came"


# ---- 2. replies that carry no usable text -----------------------------------------------


async def test_unusable_replies_end_short_by_kind_and_are_asked_again(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou
) -> None:
    llm.think = "unclosed"  # max_tokens runs out in mid-thought: no answer at all
    settings = make_settings(tmp_path, llm, hxd)
    first = await run_qa(settings, install_signals=False)

    assert (first.status, exit_code(first.status)) == ("short", 3)
    assert first.line().startswith("qa finished: 2 aspects short (2 unusable replies); questions 0/6")
    assert "asked again by the next `python run.py --settings test qa`" in first.line()
    assert first.stats["unusable"] == {"cut_off": 4}  # 2 aspects x max_stale_rounds, not a "nothing new"
    gave_up = [e for e in rows(settings, "events") if e["event"] == "aspect_exhausted"]
    assert {(e["aspect"], e["why"]) for e in gave_up} == {("战斗系统", "unusable"), ("主要角色", "unusable")}
    r = report(settings)
    assert r["unusable_replies"]["by_kind"] == {"cut_off": 4}
    assert "max_tokens" in r["unusable_replies"]["advice"]["cut_off"]
    assert r["short"] == {"战斗系统": "unusable", "主要角色": "unusable"}

    shown = status_text(settings)
    assert "战斗系统  0/3  (gave up: unusable replies (asked again next run))" in shown
    assert "to resume: python run.py --settings test qa" in shown

    llm.think = None  # thinking turned off: the next run reopens both aspects
    second = await run_qa(settings, install_signals=False)
    assert second.status == "complete" and second.stats["accepted"] == 6


async def test_saturation_is_final_until_the_settings_or_retry_short_reopen_it(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou
) -> None:
    # The model knows two questions about the aspect, and says them every time.
    llm.responder = lambda messages: '["黑熊精住在哪里？", "黑熊精的弱点是什么？"]'
    settings = make_settings(tmp_path, llm, hxd, questions={"aspects": ["主要角色"], "per_aspect": 3})
    first = await run_qa(settings, install_signals=False)
    assert first.status == "short"
    assert first.line().startswith("qa finished: 1 aspect short (1 saturated); questions 2/3")
    assert "--retry-short" in first.line()

    calls = llm.calls
    again = await run_qa(settings, install_signals=False)
    assert again.status == "short" and llm.calls == calls, "saturated under the same settings: final"
    shown = status_text(settings)
    assert "主要角色  2/3  (gave up: saturated)" in shown
    assert "qa finished: 1 aspect short (1 saturated): a saturated aspect" in shown
    assert "nothing left to do" not in shown

    more = make_settings(tmp_path, llm, hxd, questions={"aspects": ["主要角色"], "per_aspect": 4})
    await run_qa(more, install_signals=False)
    assert llm.calls > calls, "a higher per_aspect reopens the aspect"

    calls = llm.calls
    await run_qa(more, install_signals=False, retry_short=True)
    assert llm.calls > calls, "qa --retry-short reopens it too"


# ---- 3. content-safety refusals by the provider ----------------------------------------


@pytest.mark.parametrize("style", ["deepseek", "dashscope", "openai", "azure", "azure_200"])
async def test_a_refused_question_batch_is_a_lost_round_and_the_run_goes_on(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou, style: str
) -> None:
    settings = make_settings(tmp_path, llm, hxd, questions={"aspects": ["战斗系统"], "per_aspect": 3})
    llm.script(Failure.refusal(style), Failure.refusal(style))  # the first batch, and its one retry
    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete" and result.stats["accepted"] == 3
    assert result.stats["unusable"] == {"refused": 1}
    refused = [e for e in rows(settings, "events") if e["event"] == "llm_unusable"]
    assert [(e["purpose"], e["kind"], e["aspect"]) for e in refused] == [("questions", "refused", "战斗系统")]
    examples = report(settings)["unusable_replies"]["refused_examples"]
    assert examples and examples[0]["provider"] == refused[0]["detail"] != ""


async def test_a_refused_follow_up_ends_its_conversation_at_its_answered_turns(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou
) -> None:
    llm.refuse_if = lambda messages: bool(FOLLOWUP.search(messages[-1]["content"]))
    settings = make_settings(tmp_path, llm, hxd, conversations={"min_turns": 1, "max_turns": 3},
                             llm={"refusal_window": 1000})
    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    refused = [a for a in rows(settings, "answers") if a["kind"] == "refused"]
    assert refused and all(a["turn"] == 2 and a["question"] == "" for a in refused)
    assert all(a["state"] == "refused by the provider: Content Exists Risk" for a in refused)
    records = (settings.out_dir / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(records) == 6 and all(len(orjson.loads(r)["conversation"]) == 1 for r in records)
    assert report(settings)["outcomes"]["refused"] == len(refused)

    calls = llm.calls
    await run_qa(settings, install_signals=False)
    assert llm.calls == calls, "a refusal is final: the resume does not ask again"


async def test_mostly_refused_requests_stop_the_run_resumably(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou
) -> None:
    llm.refuse_every = 1
    settings = make_settings(tmp_path, llm, hxd, llm={"refusal_window": 4, "max_refused_share": 0.5})
    result = await run_qa(settings, install_signals=False)

    assert (result.status, exit_code(result.status)) == ("refused", 1)
    assert "refused 100% of the last 4 LLM calls" in result.detail
    assert result.line().endswith("run `python run.py --settings test qa` again to resume where it stopped")
    # The window's 4 calls, each tried twice, and at most one more in flight per aspect.
    assert llm.calls <= 2 * 4 + 2 * 2, "stopped instead of burning the quota"


async def test_a_request_wrong_for_every_item_is_fatal_and_quotes_the_server(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou
) -> None:
    llm.script(*[Failure("status", 400, "max_tokens must be at most 512 for this model")] * 4)
    settings = make_settings(tmp_path, llm, hxd)
    result = await run_qa(settings, install_signals=False)
    assert result.status == "fatal"
    assert "max_tokens must be at most 512 for this model" in result.detail


# ---- 4. follow-up questions are questions ----------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        '{"question": "黑熊精的洞府在哪一回出现？"}',
        '```json\n["黑熊精的洞府在哪一回出现？", "广智的兵器是什么？"]\n```',
        "追问：黑熊精的洞府在哪一回出现？",
        "1. 黑熊精的洞府在哪一回出现？\n2. 广智的兵器是什么？",
    ],
)
async def test_follow_ups_are_parsed_to_one_question(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou, reply: str
) -> None:
    answer_followups_with(llm, reply)
    settings = make_settings(tmp_path, llm, hxd, questions={"aspects": ["主要角色"], "per_aspect": 1},
                             conversations={"min_turns": 2, "max_turns": 2})
    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    record = orjson.loads((settings.out_dir / "conversations.jsonl").read_bytes())
    assert record["conversation"][1]["input"] == "黑熊精的洞府在哪一回出现？"


async def test_a_follow_up_is_new_among_every_question_of_the_run(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou
) -> None:
    answer_followups_with(llm, "黑熊精的洞府在哪一回出现？")
    settings = make_settings(tmp_path, llm, hxd, conversations={"min_turns": 2, "max_turns": 2})
    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    followups = [q["text"] for q in rows(settings, "questions") if "conv" in q]
    assert followups == ["黑熊精的洞府在哪一回出现？"], "asked in one conversation, not six"
    failed = [a for a in rows(settings, "answers") if a["kind"] == "failed"]
    assert len(failed) == 5 and {a["state"] for a in failed} == {"no follow-up question (duplicate)"}


async def test_a_follow_up_is_new_among_the_questions_of_earlier_runs_too(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou
) -> None:
    answer_followups_with(llm, "黑熊精的洞府在哪一回出现？")
    settings = make_settings(tmp_path, llm, hxd, questions={"aspects": ["主要角色"], "per_aspect": 1},
                             conversations={"min_turns": 2, "max_turns": 2})
    assert (await run_qa(settings, install_signals=False)).status == "complete"
    more = make_settings(tmp_path, llm, hxd, questions={"aspects": ["主要角色"], "per_aspect": 2},
                         conversations={"min_turns": 2, "max_turns": 2})
    await run_qa(more, install_signals=False)  # a later run, seeded from the ledger

    assert [q["text"] for q in rows(settings, "questions") if "conv" in q] == ["黑熊精的洞府在哪一回出现？"]
    assert [a["state"] for a in rows(settings, "answers") if a["kind"] == "failed"] == [
        "no follow-up question (duplicate)"]


async def test_a_rejected_follow_up_is_never_stored_nor_asked(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou
) -> None:
    too_long = "黑熊精" * 30 + "是谁？"  # 93 characters: over max_chars
    answer_followups_with(llm, too_long)
    settings = make_settings(tmp_path, llm, hxd, questions={"aspects": ["主要角色"], "per_aspect": 2},
                             conversations={"min_turns": 2, "max_turns": 2})
    first = await run_qa(settings, install_signals=False)
    assert first.stats["dropped"] == {"too_long": 2}
    failed = [a for a in rows(settings, "answers") if a["kind"] == "failed"]
    assert [(a["question"], a["state"]) for a in failed] == [("", "no follow-up question (screened_out)")] * 2

    llm.responder = None
    second = await run_qa(settings, install_signals=False)
    assert second.status == "complete"
    assert not any("黑熊精黑熊精" in q for q in hxd.counts), "the server never saw the rejected text"
    assert not any("黑熊精黑熊精" in q["text"] for q in rows(settings, "questions"))


# ---- 4 and 5. the server's standalone text, in another language --------------------------


async def test_an_english_run_keeps_realistic_questions_and_sends_follow_ups_standalone(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou
) -> None:
    questions = [
        "Which yeast strain gives the cleanest fermentation for a dry Irish stout at home?",
        "What temperature should the mash rest at for a full-bodied sweet stout?",
        "How long should a bottle-conditioned porter rest before it is ready to drink?",
    ]
    followup = "Does Irish ale yeast need a starter when the original gravity is above 1.060?"

    def responder(messages: list[dict[str, str]]) -> str:
        if FOLLOWUP.search(messages[-1]["content"]):
            return followup if "Irish stout" in messages[-1]["content"] else "Is that true for lagers as well?"
        return json.dumps(questions)

    llm.responder = responder
    settings = make_settings(tmp_path, llm, hxd, questions={
        "language": "en", "topic": "home brewing", "aspects": ["ingredients"], "per_aspect": 3,
    }, conversations={"min_turns": 2, "max_turns": 2})
    result = await run_qa(settings, install_signals=False)

    assert result.stats["accepted"] == 3, "realistic English questions are not 'too long'"
    assert f"About home brewing: {followup}" in hxd.counts, "the server gets the topic it cannot remember"
    turns = [orjson.loads(r)["conversation"] for r in (settings.out_dir / "conversations.jsonl").read_bytes().splitlines()]
    seconds = [t[1]["input"] for t in turns if len(t) > 1]
    assert followup in seconds and not any(s.startswith(("In ", "About ")) for s in seconds)


async def test_a_chinese_run_screens_out_questions_in_another_language(
    tmp_path: Path, llm: FakeLLM, hxd: FakeHuixiangdou
) -> None:
    llm.responder = lambda messages: '["黑熊精住在哪里？", "Where does the Black Bear Guai live?", "广智用什么兵器？"]'
    settings = make_settings(tmp_path, llm, hxd, questions={"aspects": ["主要角色"], "per_aspect": 2})
    result = await run_qa(settings, install_signals=False)
    assert result.status == "complete"
    assert {q["text"] for q in rows(settings, "questions")} == {"黑熊精住在哪里？", "广智用什么兵器？"}
    assert result.stats["dropped"] == {"wrong_language": 1}
    assert "not in [questions] language 1" in (settings.out_dir / "report.md").read_text(encoding="utf-8")


# ---- 6. the key ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [f"{FAKE_KEY}\u200b", f"sk-\u00e9{FAKE_KEY[4:]}"])
def test_a_key_that_cannot_be_a_header_is_one_line_naming_the_variable(tmp_path: Path, key: str) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[paths]\ndata_dir = "{tmp_path / "data"}"\nout_dir = "{tmp_path / "out"}"\n'
        '[llm]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "MY_LLM_KEY"\n', encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "MY_LLM_KEY": f"  {key}\n"}
    done = subprocess.run([sys.executable, "run.py", "qa", "--settings", str(settings)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "$MY_LLM_KEY" in errors[0] and "Traceback" not in done.stderr
    assert FAKE_KEY[4:] not in done.stderr + done.stdout


async def test_a_refused_local_answer_is_counted_with_the_providers_words(tmp_path: Path, llm: FakeLLM) -> None:
    from tests.test_local_rag import FACTS, grounded_responder, write_corpus

    zh = [q for q in FACTS if not q.isascii()]
    llm.responder = lambda messages: (json.dumps(zh, ensure_ascii=False) if "个不同的问题" in messages[-1]["content"]
                                      else grounded_responder(messages))
    llm.refuse_if = lambda messages: zh[0] in messages[-1]["content"] and "资料" in messages[-1]["content"]
    llm.refusal_style = "dashscope"
    data = write_corpus(tmp_path / "data")
    settings = make_settings(tmp_path, llm, NO_SERVER, paths={"data_dir": str(data)}, rag={"backend": "local"},
                             questions={"aspects": ["游戏概述"], "per_aspect": len(zh), "batch_size": len(zh),
                                        "max_chars": 80},
                             conversations={"min_answer_chars": 2})
    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    assert [(a["question"], a["kind"]) for a in rows(settings, "answers") if a["kind"] != "answered"] == [
        (zh[0], "refused")]
    un = report(settings)["unusable_replies"]
    assert un["by_purpose"] == {"answer": {"refused": 1}}
    assert un["refused_examples"][0]["provider"].endswith("Input data may contain inappropriate content.")
