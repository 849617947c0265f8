"""The LLM client against the fake LLM API: retries, error classes, usage,
pool size, the key's secrecy; and the fake's own answers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import openai
import pytest

from pipeline.errors import FatalServiceError, QuotaExhausted, RetryableError, ServiceError
from pipeline.services.llm import (
    LLMClient,
    backoff_delay,
    estimate_prompt_tokens,
    parse_retry_after,
)
from pipeline.settings import LLMSettings, Secret
from tests.fakes.llm_fixtures import FAKE_KEY, FAKE_KEY_ENV, RecordingSleep
from tests.fakes.llm_server import SHAPES, FakeLLM, Failure, format_questions, make_questions

ASK_ZH = [
    {"role": "system", "content": "你是一个提问助手。"},
    {"role": "user", "content": "请针对《黑神话：悟空》的「战斗系统」提出5个不同的问题。"},
]
HELLO = [{"role": "user", "content": "hello"}]


# -- pure helpers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("", 0, 0),
        ("a" * 400, 100, 101),          # ~4 characters per token
        ("悟" * 100, 100, 100),          # ~1 token per CJK character
        ("悟空" * 50 + "a" * 40, 110, 111),
        ("「」，。" * 10, 40, 40),        # full-width punctuation counts as wide
    ],
)
def test_prompt_estimate_counts_cjk_per_character_and_latin_per_four(text: str, low: int, high: int) -> None:
    overhead = estimate_prompt_tokens([{"content": ""}])
    assert low <= estimate_prompt_tokens([{"role": "user", "content": text}]) - overhead <= high


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),   # the finer header wins
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),  # an HTTP date, 30 s after now
        ({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),   # a date in the past
        ({"Retry-After": "soon"}, None),
    ],
)
def test_retry_after_is_read_from_seconds_milliseconds_or_http_date(
    headers: dict[str, str], expected: float | None
) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(headers, now=now) == expected


@pytest.mark.parametrize(("attempt", "ceiling"), [(0, 0.5), (1, 1.0), (3, 4.0), (5, 10.0), (200, 10.0)])
def test_backoff_is_full_jitter_below_a_doubling_capped_ceiling(attempt: int, ceiling: float) -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 0.5, 10.0, rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.9 and min(delays) < ceiling * 0.1  # spread over the whole range


# -- answers, usage, cost ------------------------------------------------------


async def test_chat_returns_text_and_counts_tokens_and_cost(llm_client: LLMClient, fake_llm: FakeLLM) -> None:
    first = await llm_client.chat(ASK_ZH)
    second = await llm_client.chat(HELLO, temperature=0.1, max_tokens=7)
    assert first.text.startswith("['") and first.text.count("？") == 5
    assert (first.attempts, second.attempts) == (1, 1)
    usage = llm_client.usage
    assert usage.calls == 2
    assert usage.prompt_tokens == first.prompt_tokens + second.prompt_tokens > 0
    assert usage.completion_tokens == first.completion_tokens + second.completion_tokens > 0
    assert usage.cost() == pytest.approx((usage.prompt_tokens * 2.0 + usage.completion_tokens * 8.0) / 1e6)
    assert usage.snapshot()["calls"] == 2
    # Per-call overrides reach the server; defaults come from settings.
    assert fake_llm.bodies[0]["temperature"] == 0.7 and fake_llm.bodies[0]["max_tokens"] == 1024
    assert fake_llm.bodies[1]["temperature"] == 0.1 and fake_llm.bodies[1]["max_tokens"] == 7
    assert fake_llm.bodies[0]["model"] == "fake-model"


# -- retries -----------------------------------------------------------------------


async def test_5xx_and_rate_limits_are_retried_and_retry_after_is_honoured(
    llm_client: LLMClient, fake_llm: FakeLLM, recording_sleep: RecordingSleep
) -> None:
    fake_llm.script(500, 503, Failure.rate_limited(retry_after=7))
    completion = await llm_client.chat(HELLO)
    assert completion.attempts == 4
    assert fake_llm.calls == 4
    assert len(recording_sleep.delays) == 3
    assert recording_sleep.delays[2] >= 7.0  # at least what the server asked for
    assert all(d <= 8.0 for d in recording_sleep.delays[:2])  # backoff_max_s
    assert llm_client.usage.retries == 3 and llm_client.usage.rate_limited == 1


@pytest.mark.parametrize(
    ("failure", "at_least"),
    [
        (Failure("status", 429, "slow down", retry_after_ms=4500), 4.5),
        (Failure("status", 503, "Server Overloaded", retry_after=20, retry_after_date=True), 18.0),
        (Failure("status", 502, "bad gateway", retry_after=3), 3.0),
    ],
)
async def test_every_retry_after_form_is_honoured(
    llm_client: LLMClient, fake_llm: FakeLLM, recording_sleep: RecordingSleep,
    failure: Failure, at_least: float,
) -> None:
    fake_llm.script(failure)
    assert (await llm_client.chat(HELLO)).attempts == 2
    assert recording_sleep.delays[0] >= at_least


async def test_dropped_connection_and_504_are_retried(
    llm_client: LLMClient, fake_llm: FakeLLM
) -> None:
    fake_llm.script("drop", 504)
    completion = await llm_client.chat(HELLO)
    assert completion.attempts == 3
    assert fake_llm.status_counts["drop"] == 1 and fake_llm.status_counts[504] == 1


async def test_a_hung_server_times_out_and_is_retried(
    llm_settings: LLMSettings, fake_llm: FakeLLM, recording_sleep: RecordingSleep
) -> None:
    settings = dataclasses.replace(llm_settings, timeout_s=0.3)
    fake_llm.script("hang")
    async with LLMClient(settings, sleep=recording_sleep) as client:
        completion = await client.chat(HELLO)
    assert completion.attempts == 2 and fake_llm.status_counts["hang"] == 1


async def test_retries_run_out_into_a_retryable_error(
    llm_client: LLMClient, fake_llm: FakeLLM, recording_sleep: RecordingSleep
) -> None:
    fake_llm.script(*([500] * 10))
    with pytest.raises(RetryableError) as caught:
        await llm_client.chat(HELLO)
    assert fake_llm.calls == 4  # the first try and max_retries=3 retries
    assert len(recording_sleep.delays) == 3
    message = str(caught.value)
    assert "500" in message and fake_llm.base_url in message and "gave up after 4 attempts" in message
    assert llm_client.usage.failures == 1


async def test_server_side_rpm_limit_is_waited_out(
    llm_client: LLMClient, fake_llm: FakeLLM, recording_sleep: RecordingSleep
) -> None:
    now = [1000.0]
    fake_llm.clock = lambda: now[0]
    fake_llm.rpm_limit = 2

    def advance(seconds: float) -> None:
        now[0] += seconds

    recording_sleep.on_sleep.append(advance)
    for _ in range(3):
        await llm_client.chat(HELLO)
    assert fake_llm.status_counts[429] == 1 and fake_llm.status_counts[200] == 3
    assert len(recording_sleep.delays) == 1 and recording_sleep.delays[0] >= 60.0
    assert llm_client.usage.rate_limited == 1


# -- quota: never retried ------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "status"),
    [("openai", 429), ("deepseek", 402), ("siliconflow", 403), ("siliconflow_daily", 429)],
)
async def test_exhausted_quota_is_raised_at_once_in_every_provider_style(
    llm_client: LLMClient, fake_llm: FakeLLM, recording_sleep: RecordingSleep, style: str, status: int
) -> None:
    fake_llm.quota_after = 1
    fake_llm.quota_style = style
    await llm_client.chat(HELLO)
    with pytest.raises(QuotaExhausted) as caught:
        await llm_client.chat(HELLO)
    assert fake_llm.calls == 2  # exactly one request for the failing call
    assert recording_sleep.delays == []
    assert caught.value.status == status and str(status) in str(caught.value)
    assert llm_client.usage.rate_limited == 0


@pytest.mark.parametrize(
    "failure",
    [
        Failure("status", 429, "Rate limit exceeded: TPD limit reached"),
        Failure("status", 429, "You have hit your limit of requests per day"),
        Failure("status", 403, "账户余额不足"),
        Failure("status", 403, "Insufficient credit for this model"),
        Failure("status", 429, "quota", body={"error": {"message": "billing", "type": "insufficient_quota"}}),
    ],
)
async def test_daily_limits_and_balance_messages_are_quota(
    llm_client: LLMClient, fake_llm: FakeLLM, failure: Failure
) -> None:
    fake_llm.script(failure)
    with pytest.raises(QuotaExhausted):
        await llm_client.chat(HELLO)
    assert fake_llm.calls == 1


# -- fatal: say what to fix ---------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "must_say"),
    [
        (Failure("status", 400, "max_tokens is too large"), ["400", "max_tokens is too large", "'fake-model'"]),
        (Failure("status", 422, "temperature out of range"), ["422", "'fake-model'", "temperature"]),
        (Failure("status", 404, "Model does not exist"), ["404", "'fake-model'", "[llm] model"]),
        (Failure("status", 403, "You are not allowed to use this model"), ["403", "$" + FAKE_KEY_ENV]),
        (Failure("status", 418, "I'm a teapot"), ["418", "teapot"]),
    ],
)
async def test_fatal_errors_are_not_retried_and_say_what_to_fix(
    llm_client: LLMClient, fake_llm: FakeLLM, failure: Failure, must_say: list[str]
) -> None:
    fake_llm.script(failure)
    with pytest.raises(FatalServiceError) as caught:
        await llm_client.chat(HELLO)
    assert fake_llm.calls == 1
    message = str(caught.value)
    assert fake_llm.base_url in message
    for words in must_say:
        assert words in message


async def test_a_wrong_key_names_the_environment_variable(llm_settings: LLMSettings, fake_llm: FakeLLM) -> None:
    settings = dataclasses.replace(llm_settings, api_key=Secret("sk-wrong-key-123456"))
    async with LLMClient(settings) as client:
        with pytest.raises(FatalServiceError) as caught:
            await client.chat(HELLO)
    assert caught.value.status == 401
    assert f"${FAKE_KEY_ENV}" in str(caught.value)
    assert fake_llm.calls == 1


def test_a_missing_key_is_refused_before_any_call() -> None:
    settings = LLMSettings(api_key_env="MY_LLM_KEY", api_key=Secret(""))
    with pytest.raises(FatalServiceError, match=r"\$MY_LLM_KEY"):
        LLMClient(settings)


async def test_an_unknown_model_on_the_server_is_fatal(llm_settings: LLMSettings, fake_llm: FakeLLM) -> None:
    settings = dataclasses.replace(llm_settings, model="no-such-model")
    async with LLMClient(settings) as client:
        with pytest.raises(FatalServiceError, match="no-such-model"):
            await client.chat(HELLO)


# -- probe ------------------------------------------------------------------------


async def test_probe_passes_when_the_model_is_listed(llm_client: LLMClient, fake_llm: FakeLLM) -> None:
    await llm_client.probe()
    assert fake_llm.model_list_calls == 1 and fake_llm.calls == 0


async def test_probe_names_an_unknown_model_and_what_is_offered(
    llm_settings: LLMSettings, fake_llm: FakeLLM
) -> None:
    settings = dataclasses.replace(llm_settings, model="deepseek-chat")
    async with LLMClient(settings) as client:
        with pytest.raises(FatalServiceError) as caught:
            await client.probe()
    message = str(caught.value)
    assert "deepseek-chat" in message and "fake-model, other-model" in message


async def test_probe_names_the_key_variable_on_a_bad_key(llm_settings: LLMSettings, fake_llm: FakeLLM) -> None:
    settings = dataclasses.replace(llm_settings, api_key=Secret("sk-nope-000000000"))
    async with LLMClient(settings) as client:
        with pytest.raises(FatalServiceError, match=rf"\${FAKE_KEY_ENV}"):
            await client.probe()


async def test_probe_says_when_the_url_is_unreachable(llm_settings: LLMSettings) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = dataclasses.replace(llm_settings, base_url=f"http://127.0.0.1:{port}/v1")
    async with LLMClient(settings) as client:
        with pytest.raises(RetryableError) as caught:
            await client.probe()
    assert f"127.0.0.1:{port}" in str(caught.value) and "base_url" in str(caught.value)


# -- concurrency ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_the_connection_pool_does_not_cap_concurrency(
    llm_settings: LLMSettings, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    if transport == "httpx":  # as when the SDK's aiohttp extra is not installed
        def missing(**_: object) -> None:
            raise RuntimeError("To use the aiohttp client you must have installed the package with the `aiohttp` extra")
        monkeypatch.setattr(openai, "DefaultAioHttpClient", missing)
    # 150 > httpx's default pool of 100: all 150 must be inside the server at once.
    settings = dataclasses.replace(llm_settings, concurrency=150)
    fake_llm.gate = asyncio.Event()
    async with LLMClient(settings) as client:
        calls = [asyncio.create_task(client.chat(HELLO)) for _ in range(160)]
        async with asyncio.timeout(15):
            await fake_llm.wait_in_flight(150)
        assert fake_llm.in_flight == 150  # and no more: the semaphore caps it
        fake_llm.gate.set()
        results = await asyncio.gather(*calls)
    assert len(results) == 160 and fake_llm.peak_in_flight == 150


# -- the key never shows --------------------------------------------------------------


async def test_the_key_never_appears_in_logs_reprs_or_errors(
    llm_settings: LLMSettings, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = dataclasses.replace(llm_settings, max_retries=1, timeout_s=0.3)
    errors: list[BaseException] = []
    async with LLMClient(settings, sleep=RecordingSleep()) as client:
        texts = [repr(client), repr(settings), str(settings), repr(client.usage)]
        await client.chat(HELLO)
        await client.probe()
        scripts: list[list[Failure | int | str]] = [
            [500, 500], ["drop", "drop"], ["hang", "hang"], [Failure.rate_limited(1)],
            [400], [403], [404], [422], [Failure("status", 403, "余额不足")],
        ]
        for script in scripts:
            fake_llm.script(*script)
            try:
                await client.chat(HELLO)
            except ServiceError as exc:
                errors.append(exc)
        for style in ("openai", "deepseek", "siliconflow", "siliconflow_daily"):
            fake_llm.quota_after, fake_llm.quota_style = 0, style
            with pytest.raises(QuotaExhausted) as caught:
                await client.chat(HELLO)
            errors.append(caught.value)
        fake_llm.quota_after = None
    wrong = dataclasses.replace(settings, api_key=Secret(FAKE_KEY + "-old"))
    async with LLMClient(wrong) as client:
        with pytest.raises(FatalServiceError) as caught:
            await client.chat(HELLO)
        errors.append(caught.value)
    with pytest.raises(FatalServiceError) as caught:
        LLMClient(dataclasses.replace(settings, api_key=Secret("")))
    errors.append(caught.value)
    assert len(errors) >= 14
    for exc in errors:
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    texts += [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    assert any("openai" in r.name for r in caplog.records)  # the SDK's debug output was captured
    for text in texts:
        assert FAKE_KEY not in text


# -- the fake itself -------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_carries_every_question_verbatim(shape: str) -> None:
    questions = make_questions(0, 4) + ["What's the 'staff' for?"]
    text = format_questions(questions, shape)
    assert all(q in text for q in questions)
    assert text not in {format_questions(questions, other) for other in SHAPES if other != shape}


def test_generated_questions_are_distinct_and_far_apart() -> None:
    questions = make_questions(0, 400)
    assert len(set(questions)) == 400

    def grams(s: str) -> set[str]:
        return {s[i:i + 3] for i in range(len(s) - 2)}

    sets = [grams(q) for q in questions]
    worst = max(len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[:i])
    assert worst < 0.7  # the questions module's default near-duplicate threshold


async def test_default_responder_writes_new_questions_per_call_and_a_follow_up(
    llm_client: LLMClient, fake_llm: FakeLLM
) -> None:
    fake_llm.shape = "json"
    first = json.loads((await llm_client.chat(ASK_ZH)).text)
    second = json.loads((await llm_client.chat(ASK_ZH)).text)
    assert len(first) == len(second) == 5 and not set(first) & set(second)
    en = [{"role": "user", "content": "Write 3 different questions about the combat system of Black Myth."}]
    assert len(json.loads((await llm_client.chat(en)).text)) == 3
    follow = await llm_client.chat([{"role": "user", "content": "请根据它提出一个更深入的追问。问题：x 回答：y"}])
    assert follow.text.endswith("？") and "[" not in follow.text
    assert fake_llm.requests[0] == ASK_ZH


async def test_a_responder_scripts_answers(llm_client: LLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.responder = lambda messages: messages[-1]["content"].upper()
    assert (await llm_client.chat(HELLO)).text == "HELLO"


@pytest.mark.slow
def test_the_fake_runs_as_a_subprocess_and_prints_its_url() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.llm_server", "--port", "0", "--api-key", "sk-sub",
         "--model", "m1", "--shape", "numbered"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        client = openai.OpenAI(base_url=url, api_key="sk-sub", max_retries=0, timeout=10)
        with client:
            reply = client.chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "Write 2 different questions about the lore of X."}]
            )
        assert reply.choices[0].message.content is not None
        assert reply.choices[0].message.content.startswith("1. ")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert json.loads(err.strip().splitlines()[-1])["served"] == 1
