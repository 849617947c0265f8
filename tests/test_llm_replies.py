"""What real models and providers send back, through the real client and the
fake: the client returns the answer proper or says, by kind, why there is none;
a content-safety refusal is an error of that one prompt; the key is checked."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.errors import ContentRefused, FatalServiceError, UnusableReply
from pipeline.services.llm import LLMClient
from pipeline.settings import LLMSettings, Secret
from tests.fakes.llm_fixtures import FAKE_KEY
from tests.fakes.llm_server import REFUSAL_STYLES, Failure, FakeLLM

ASK_ZH = [{"role": "user", "content": "请针对《黑神话：悟空》的「战斗系统」提出3个不同的问题。"}]


@pytest.mark.parametrize("style", ["closed", "close_only", "field"])
async def test_reasoning_never_leaves_the_client(llm_client: LLMClient, fake_llm: FakeLLM, style: str) -> None:
    fake_llm.think = style
    fake_llm.shape = "json"
    done = await llm_client.chat(ASK_ZH)
    questions = json.loads(done.text)  # the answer proper only: the draft list is gone
    assert len(questions) == 3 and not any("草稿" in q for q in questions)
    assert "think" not in done.text and "NOT_IN_MATERIAL" not in done.text


async def test_a_reply_that_is_all_reasoning_is_unusable_after_one_more_try(
    llm_client: LLMClient, fake_llm: FakeLLM
) -> None:
    fake_llm.think = "unclosed"
    with pytest.raises(UnusableReply) as caught:
        await llm_client.chat(ASK_ZH)
    assert caught.value.kind == "cut_off" and "max_tokens" in str(caught.value)
    assert fake_llm.calls == 2
    assert llm_client.usage.unusable == {"cut_off": 1}
    assert llm_client.usage.completion_tokens > 0, "the reasoning was paid for"


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (Failure.reply(None), "empty"),
        (Failure.reply(""), "empty"),
        (Failure.reply("<think>thinking only</think>"), "reasoning_only"),
        (Failure.reply(None, "length"), "cut_off"),
        (Failure.empty_choices(), "no_choices"),
    ],
)
async def test_empty_replies_are_counted_by_kind(
    llm_client: LLMClient, fake_llm: FakeLLM, reply: Failure, kind: str
) -> None:
    fake_llm.script(reply, reply)
    with pytest.raises(UnusableReply) as caught:
        await llm_client.chat(ASK_ZH)
    assert caught.value.kind == kind
    assert llm_client.usage.unusable[kind] == 1


async def test_one_unusable_reply_is_tried_once_more(llm_client: LLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.script(Failure.reply(None))
    done = await llm_client.chat([{"role": "user", "content": "hello"}])
    assert done.text.startswith("fake answer") and done.attempts == 2
    assert not llm_client.usage.unusable


@pytest.mark.parametrize("style", REFUSAL_STYLES)
async def test_each_providers_refusal_is_a_refusal_of_this_prompt(
    llm_client: LLMClient, fake_llm: FakeLLM, style: str
) -> None:
    fake_llm.script(Failure.refusal(style), Failure.refusal(style))
    with pytest.raises(ContentRefused) as caught:
        await llm_client.chat(ASK_ZH)
    assert fake_llm.calls == 2, "retried once, not more"
    assert caught.value.kind == "refused" and caught.value.provider_message
    assert "max_tokens" not in str(caught.value), "no parameters guessed for a refusal"
    assert llm_client.usage.unusable == {"refused": 1}
    assert llm_client.usage.failures == 0


async def test_a_bad_request_for_every_item_stays_fatal_and_quotes_the_server(
    llm_client: LLMClient, fake_llm: FakeLLM
) -> None:
    fake_llm.script(Failure("status", 400, "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]"))
    with pytest.raises(FatalServiceError) as caught:
        await llm_client.chat(ASK_ZH)
    assert "the valid range of max_tokens is [1, 8192]" in str(caught.value)
    assert "max_tokens (" in str(caught.value) and fake_llm.calls == 1


async def test_mostly_refused_recent_calls_are_noticed(llm_settings: LLMSettings, fake_llm: FakeLLM) -> None:
    settings = dataclasses.replace(llm_settings, refusal_window=4, max_refused_share=0.5)
    async with LLMClient(settings) as client:
        fake_llm.script(Failure.refusal("deepseek"), Failure.refusal("deepseek"))
        with pytest.raises(ContentRefused):
            await client.chat(ASK_ZH)
        await client.chat(ASK_ZH)
        await client.chat(ASK_ZH)
        assert not client.refusals_dominate(), "three calls are fewer than the window"
        fake_llm.refuse_every = 1
        with pytest.raises(ContentRefused):
            await client.chat(ASK_ZH)
        assert client.refusals_dominate()  # 2 of the last 4


@pytest.mark.parametrize("bad", ["\u200b", "\ufeff", "é", "\n", " "])
async def test_a_key_that_cannot_be_a_header_is_one_line_naming_the_variable(bad: str) -> None:
    settings = LLMSettings(api_key_env="MY_LLM_KEY", api_key=Secret(FAKE_KEY[:6] + bad + FAKE_KEY[6:]))
    with pytest.raises(FatalServiceError) as caught:
        LLMClient(settings)
    message = str(caught.value)
    assert "$MY_LLM_KEY" in message and "\n" not in message
    assert FAKE_KEY[:6] not in message and FAKE_KEY[6:] not in message


def test_surrounding_whitespace_of_the_key_is_stripped() -> None:
    from pipeline.settings import parse_settings

    settings = parse_settings({}, environ={"SILICONFLOW_API_KEY": f"  {FAKE_KEY}\r\n"})
    assert settings.llm.api_key.reveal() == FAKE_KEY
