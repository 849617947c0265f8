"""OpenAI-compatible LLM client: limits, retries, error classes, usage.

One :class:`LLMClient` per run. Each :meth:`LLMClient.chat` call takes, in
this order and again on every retry: a slot of ``concurrency``, a request
from the requests-per-minute limiter, an estimate of its tokens from the
tokens-per-minute limiter; then it calls the real ``openai`` SDK (its own
retries off, so ours govern) over aiohttp with a connection pool larger than
``concurrency``, so the pool never caps concurrency silently.

Library errors become :mod:`pipeline.errors` in exactly one place,
:func:`translate_error`::

    openai.APIConnectionError / APITimeoutError  -> RetryableError
    429 rate limit, 408, 409, 5xx                -> RetryableError (retry_after from headers)
    402; 429 insufficient_quota or a daily limit;
    403 speaking of balance / quota / 余额      -> QuotaExhausted (never retried)
    401                                          -> FatalServiceError naming the key's env var
    400/403/422 content-safety refusal           -> ContentRefused (this prompt only)
    400, 404, 422                                -> FatalServiceError naming the model
    403 otherwise, other 4xx                     -> FatalServiceError

A reply is the answer proper (:func:`pipeline.services.replies.answer_proper`):
reasoning never leaves this module. A reply with nothing usable raises
:class:`UnusableReply` (its kind says why), a 200 cut by the content filter
:class:`ContentRefused`; each is tried once more, then left to the caller as
the loss of that one item.

The key is only ever handed to the SDK; messages quote the provider's text
with the key redacted, and name the environment variable instead.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import openai
from aiolimiter import AsyncLimiter

from pipeline.errors import (
    ContentRefused,
    FatalServiceError,
    QuotaExhausted,
    RetryableError,
    ServiceError,
    Stopped,
    UnusableReply,
)
from pipeline.services.replies import ADVICE, answer_proper, refusal_of, unusable_kind
from pipeline.settings import LLMSettings

__all__ = [
    "RPM_MARGIN",
    "Completion",
    "LLMClient",
    "TokenBudget",
    "Usage",
    "backoff_delay",
    "estimate_prompt_tokens",
    "parse_retry_after",
    "translate_error",
]

log = logging.getLogger(__name__)

SERVICE = "llm"
_MESSAGE_LIMIT = 300

_DAILY = re.compile(r"\b(RPD|TPD)\b|per[ _-]?day|daily|每日|每天|当日", re.IGNORECASE)
_BALANCE = re.compile(
    r"balance|quota|insufficient|credit|billing|余额|欠费|充值|额度", re.IGNORECASE
)
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})
_RETRYABLE_STATUS = frozenset({408, 409, 429})
# Calls are spaced 1 % wider than rpm allows: 0.6 s of slack over a 60 s
# window, far more than the jitter between sending and the server's count.
RPM_MARGIN = 0.01
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Completion:
    """One successful chat call. ``text`` is the answer proper: never blank,
    never reasoning."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float   # from the first attempt to the answer, waits included
    attempts: int
    finish_reason: str = "stop"


class Usage:
    """Running totals for the cost report; cheap to read at any time."""

    __slots__ = (
        "_price_in", "_price_out", "calls", "completion_tokens", "failures",
        "latencies", "prompt_tokens", "rate_limited", "recent", "retries", "unusable",
    )

    def __init__(self, price_input_per_m: float = 0.0, price_output_per_m: float = 0.0,
                 window: int = 20) -> None:
        self._price_in = price_input_per_m
        self._price_out = price_output_per_m
        self.calls = 0             # answered calls
        self.retries = 0           # attempts after the first, over all calls
        self.rate_limited = 0      # 429 rate-limit answers (quota 429s not included)
        self.failures = 0          # calls that raised
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # Seconds of each answered call, waits and retries included, for the
        # run report's p50/p95; a float per call stays small even at 100k calls.
        self.latencies: list[float] = []
        # Calls whose final reply was unusable, by kind (replies.UNUSABLE_KINDS).
        self.unusable: Counter[str] = Counter()
        # Whether each of the last ``window`` finished calls was refused by the
        # provider's content filter: a run whose prompts are mostly refused stops.
        self.recent: deque[bool] = deque(maxlen=window)

    def refused_share(self) -> float:
        """Share of the last ``window`` finished calls the provider refused;
        0 until that many calls have finished."""
        if len(self.recent) < (self.recent.maxlen or 0):
            return 0.0
        return sum(self.recent) / len(self.recent)

    def cost(self) -> float:
        """Money spent so far, in the currency of ``[llm] price_*_per_m``."""
        return (self.prompt_tokens * self._price_in + self.completion_tokens * self._price_out) / 1e6

    def snapshot(self) -> dict[str, int | float]:
        """The totals as a plain dict (for progress lines and the run report)."""
        return {
            "calls": self.calls,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "failures": self.failures,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": round(self.cost(), 6),
        }

    def __repr__(self) -> str:
        return f"Usage({self.snapshot()})"


# -- pure helpers ------------------------------------------------------------


def _is_wide(ch: str) -> bool:
    o = ord(ch)
    return (
        0x2E80 <= o <= 0x9FFF      # CJK radicals, kana, unified ideographs
        or 0xAC00 <= o <= 0xD7AF   # Hangul
        or 0xF900 <= o <= 0xFAFF   # compatibility ideographs
        or 0xFF00 <= o <= 0xFFEF   # full-width forms
        or 0x20000 <= o <= 0x3FFFF
    )


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """A rough, deliberately generous token count of a prompt: about one token
    per CJK character, one per four other characters, plus a few per message
    for the chat template."""
    total = 0
    for m in messages:
        text = str(m.get("content") or "")
        wide = sum(1 for ch in text if _is_wide(ch))
        total += wide + (len(text) - wide + 3) // 4 + 4
    return total + 3


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else
    ``Retry-After`` as seconds or as an HTTP date (relative to ``now``, a
    Unix time, default the current time). ``None`` when absent or unreadable."""
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)].

    ``attempt`` counts from 0 for the first retry. Full jitter spreads the
    retries of many workers hit by the same 429 instead of re-synchronising them.
    """
    ceiling = min(cap, base * (2.0 ** min(attempt, 60)))
    return rng.uniform(0.0, ceiling)


def _redact(text: str, secret: str) -> str:
    if secret and secret in text:
        text = text.replace(secret, "***")
    return text


def _provider_message(exc: openai.APIStatusError, secret: str) -> tuple[str, str]:
    """(message, code-or-type) from the error body, whatever the provider's shape."""
    body = exc.body
    message: Any = None
    code: Any = None
    if isinstance(body, Mapping):
        inner = body.get("error")
        if isinstance(inner, Mapping):
            body = inner
        message = body.get("message") or body.get("msg") or body.get("detail")
        code = body.get("code") or body.get("type")
        if isinstance(body.get("type"), str) and body.get("type") in _QUOTA_CODES:
            code = body.get("type")
    elif isinstance(body, str):
        message = body
    if not message:
        message = exc.message
    text = " ".join(_redact(str(message), secret).split())
    if len(text) > _MESSAGE_LIMIT:
        text = text[:_MESSAGE_LIMIT] + "…"
    return text, ("" if code is None else str(code))


def translate_error(
    exc: BaseException, settings: LLMSettings, *, now: float | None = None
) -> ServiceError:
    """The one place where ``openai`` exceptions become :mod:`pipeline.errors`.

    The message names the status, the provider's own words (truncated, key
    redacted) and the base URL, and says what to fix when a person must.
    """
    url = settings.base_url
    env = settings.api_key_env
    model = settings.model
    secret = settings.api_key.reveal()
    if isinstance(exc, openai.APITimeoutError):
        # The aiohttp transport reports refused and dropped connections as
        # timeouts too, so the message covers all three.
        return RetryableError(
            f"LLM API at {url}: no answer within {settings.timeout_s:g} s, could not connect, "
            f"or the connection dropped ({_cause(exc, secret)}); "
            "check [llm] base_url and that the server is up",
            service=SERVICE,
        )
    if isinstance(exc, openai.APIConnectionError):
        return RetryableError(
            f"LLM API at {url}: cannot connect or the connection dropped ({_cause(exc, secret)}); "
            "check [llm] base_url and that the server is up",
            service=SERVICE,
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        said, code = _provider_message(exc, secret)
        where = f"LLM API at {url} answered {status}: {said}"
        retry_after = parse_retry_after(exc.response.headers, now)
        if status == 402:
            return QuotaExhausted(f"{where} (out of balance; top up, then resume)",
                                  service=SERVICE, status=status)
        if status == 429:
            if code in _QUOTA_CODES or _DAILY.search(said) or (
                _BALANCE.search(said) and "rate" not in said.lower()
            ):
                return QuotaExhausted(f"{where} (quota or daily limit used up; resume later)",
                                      service=SERVICE, status=status)
            return RetryableError(where, service=SERVICE, status=status, retry_after=retry_after)
        if status == 403 and (_BALANCE.search(said) or code in _QUOTA_CODES):
            return QuotaExhausted(f"{where} (out of balance or quota; top up, then resume)",
                                  service=SERVICE, status=status)
        if refusal_of(status, exc.body, said):
            return ContentRefused(f"{where} (refused by the provider's content filter)",
                                  provider_message=said, service=SERVICE, status=status)
        if status == 403:
            return FatalServiceError(
                f"{where}; the key in ${env} may not use model {model!r}: "
                "check the account's permissions or [llm] model",
                service=SERVICE, status=status,
            )
        if status >= 500 or status in _RETRYABLE_STATUS:
            return RetryableError(where, service=SERVICE, status=status, retry_after=retry_after)
        if status == 401:
            return FatalServiceError(f"{where}; check the key in ${env}",
                                     service=SERVICE, status=status)
        if status == 404:
            return FatalServiceError(
                f"{where}; check [llm] model ({model!r}) and [llm] base_url",
                service=SERVICE, status=status,
            )
        if status in (400, 422):
            return FatalServiceError(
                f"{where}; the server rejects the request itself (not one prompt): check "
                f"[llm] model ({model!r}), max_tokens ({settings.max_tokens}) and temperature "
                f"({settings.temperature:g}) against the provider's documentation",
                service=SERVICE, status=status,
            )
        return FatalServiceError(where, service=SERVICE, status=status)
    if isinstance(exc, openai.OpenAIError):
        # e.g. APIResponseValidationError: a malformed answer, worth another try.
        return RetryableError(
            f"LLM API at {url}: unusable answer ({type(exc).__name__}: "
            f"{_redact(str(exc), secret)[:_MESSAGE_LIMIT]})",
            service=SERVICE,
        )
    return FatalServiceError(
        f"LLM API at {url}: unexpected {type(exc).__name__}: {_redact(str(exc), secret)[:_MESSAGE_LIMIT]}",
        service=SERVICE,
    )


def _cause(exc: BaseException, secret: str) -> str:
    inner = exc.__cause__ or exc.__context__
    if inner is None:
        return type(exc).__name__
    text = str(inner) or type(inner).__name__
    return _redact(f"{type(inner).__name__}: {text}", secret)[:_MESSAGE_LIMIT]


# -- limits --------------------------------------------------------------------


class TokenBudget:
    """Requests-per-minute and tokens-per-minute limiters, with the token
    estimate clamped to capacity and corrected from reported usage.

    aiolimiter cannot give capacity back, so when a call used fewer tokens
    than estimated the difference is simply lost (the limit errs on the safe
    side). When it used more, the excess becomes a debt added to the next
    acquisition (clamped too), instead of making the finished call wait for it.

    The requests limiter paces instead of allowing a burst: a leaky bucket
    of ``rpm`` per 60 s lets ``rpm`` calls through at once and then one per
    interval, i.e. nearly 2 x ``rpm`` in the first minute, which a provider
    counting a sliding 60 s window answers with 429s (seen in
    ``bench/bench_throughput.py``). A bucket of one request, draining one per
    ``60 / rpm`` s stretched by :data:`RPM_MARGIN`, never puts more than
    ``rpm`` calls in any 60 s window, with room for network jitter.
    """

    __slots__ = ("_debt", "requests", "tokens")

    def __init__(self, rpm: int, tpm: int) -> None:
        # Capacity a hair over one request: the bucket's float level after a
        # full interval can be left at ~1e-16 instead of 0, and with a capacity
        # of exactly 1 aiolimiter then re-arms a zero-length timer over and over.
        interval = 60.0 / rpm * (1.0 + RPM_MARGIN)
        self.requests = AsyncLimiter(1.0 + _EPS, interval * (1.0 + _EPS))
        self.tokens = AsyncLimiter(tpm, 60)
        self._debt = 0

    def clamp(self, amount: int) -> int:
        """``amount`` capped to what the token limiter can ever grant at once."""
        return max(0, min(amount, int(self.tokens.max_rate)))

    async def acquire(self, estimate: int) -> int:
        """Wait for one request and ``estimate`` tokens plus any debt (clamped
        to capacity); return the part taken for this call's own estimate,
        which is what :meth:`settle` must be given."""
        await self.requests.acquire()
        taken = self.clamp(estimate + self._debt)
        own = min(estimate, taken)
        # Take the debt off before waiting, so concurrent callers do not pay it twice.
        self._debt -= taken - own
        await self.tokens.acquire(taken)
        return own

    def settle(self, own: int, actual: int) -> None:
        """Record what the call really used, given the part taken for it."""
        if actual > own:
            self._debt += actual - own


# -- the client ------------------------------------------------------------------


def _http_client(settings: LLMSettings) -> Any:
    """The SDK's aiohttp transport when installed, else its httpx client, with
    a pool larger than ``concurrency`` (httpx's default of 100 would cap it)."""
    size = settings.concurrency + 4  # headroom for a probe alongside full load
    limits_cls = type(openai.DEFAULT_CONNECTION_LIMITS)
    limits = limits_cls(max_connections=size, max_keepalive_connections=size)
    factory = getattr(openai, "DefaultAioHttpClient", None)
    if factory is not None:
        try:
            return factory(limits=limits, timeout=settings.timeout_s)
        except RuntimeError:  # the SDK says its aiohttp extra is missing
            pass
    return openai.DefaultAsyncHttpxClient(limits=limits, timeout=settings.timeout_s)


def _check_key(settings: LLMSettings) -> None:
    """A key that cannot travel in an ``Authorization`` header (a zero-width
    character, a line break inside it, a non-ASCII letter) would fail deep in
    the HTTP stack; say so in one line naming the variable, never the key.
    Surrounding whitespace is already stripped by the settings."""
    key = settings.api_key.reveal()
    for i, ch in enumerate(key, 1):
        if not "\x21" <= ch <= "\x7e":
            name = unicodedata.name(ch, f"U+{ord(ch):04X}")
            raise FatalServiceError(
                f"${settings.api_key_env}: character {i} of the key is {name} (U+{ord(ch):04X}), "
                "which cannot be sent in an HTTP header; set the variable again from a clean copy "
                "of the key",
                service=SERVICE,
            )


class LLMClient:
    """Chat completions against an OpenAI-compatible API, within the run's limits."""

    def __init__(
        self,
        settings: LLMSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        http_client: Any = None,
    ) -> None:
        """``http_client`` is a seam for tests (an SDK-compatible async client
        with an in-memory transport); by default one is built from ``settings``."""
        if not settings.api_key:
            raise FatalServiceError(
                f"no LLM API key: set the environment variable ${settings.api_key_env} "
                f"(the key for {settings.base_url})",
                service=SERVICE,
            )
        _check_key(settings)
        self.settings = settings
        self.usage = Usage(settings.price_input_per_m, settings.price_output_per_m,
                           window=settings.refusal_window)
        self.budget = TokenBudget(settings.rpm, settings.tpm)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._halted = False
        self._openai = openai.AsyncOpenAI(
            api_key=settings.api_key.reveal(),
            base_url=settings.base_url,
            max_retries=0,
            timeout=settings.timeout_s,
            http_client=http_client if http_client is not None else _http_client(settings),
        )

    def __repr__(self) -> str:
        s = self.settings
        return f"LLMClient(base_url={s.base_url!r}, model={s.model!r}, concurrency={s.concurrency})"

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._openai.close()

    def halt(self) -> None:
        """Send no more requests, from now on: a call still waiting for its turn
        (a concurrency slot, the rate limits, a retry's backoff) raises
        :class:`Stopped` at the moment it would have been sent. Requests
        already sent finish."""
        self._halted = True

    def _may_send(self) -> None:
        """Called after every wait, right before a request leaves."""
        if self._halted:
            raise Stopped(f"LLM API at {self.settings.base_url}: request not sent, the run is stopping")

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        """One chat completion, retried on rate limits, 5xx, timeouts and dropped
        connections with jittered exponential backoff (at least as long as the
        server's ``Retry-After``), up to ``max_retries`` times. The text is the
        answer proper (reasoning removed, never blank).

        Raises :class:`RetryableError` when retries run out,
        :class:`QuotaExhausted` at once, :class:`FatalServiceError` at once,
        :class:`UnusableReply` (:class:`ContentRefused` among them) when a
        second try of this prompt is unusable too, :class:`Stopped` once
        :meth:`halt` was called.
        """
        s = self.settings
        temperature = s.temperature if temperature is None else temperature
        max_tokens = s.max_tokens if max_tokens is None else max_tokens
        estimate = estimate_prompt_tokens(messages) + max_tokens
        started = self._clock()
        attempt = 0
        unusable_tries = 0
        while True:
            attempt += 1
            try:
                text, prompt, output, finish = await self._attempt(messages, temperature, max_tokens, estimate)
            except UnusableReply as err:
                # One more try: an empty or cut reply is often a fluke of sampling,
                # and a content filter is asked once more, not hammered.
                unusable_tries += 1
                if unusable_tries > 1:
                    self.usage.unusable[err.kind] += 1
                    self.usage.recent.append(isinstance(err, ContentRefused))
                    raise
                self.usage.retries += 1
                log.debug("LLM reply unusable (%s), trying once more: %s", err.kind, err)
                continue
            except RetryableError as err:
                if err.status == 429:
                    self.usage.rate_limited += 1
                if attempt > s.max_retries:
                    self.usage.failures += 1
                    raise RetryableError(
                        f"{err} (gave up after {attempt} attempts)",
                        service=SERVICE, status=err.status, retry_after=err.retry_after,
                    ) from err
                delay = backoff_delay(attempt - 1, s.backoff_base_s, s.backoff_max_s, self._rng)
                if err.retry_after is not None:
                    delay = max(delay, err.retry_after)
                self.usage.retries += 1
                log.debug("LLM retry %d/%d in %.2f s: %s", attempt, s.max_retries, delay, err)
                await self._sleep(delay)
                continue
            except ServiceError:
                self.usage.failures += 1
                raise
            seconds = self._clock() - started
            self.usage.latencies.append(seconds)
            self.usage.recent.append(False)
            return Completion(
                text=text,
                prompt_tokens=prompt,
                completion_tokens=output,
                seconds=seconds,
                attempts=attempt,
                finish_reason=finish,
            )

    async def _attempt(
        self, messages: list[dict[str, str]], temperature: float, max_tokens: int, estimate: int
    ) -> tuple[str, int, int, str]:
        """One request: (answer proper, prompt tokens, completion tokens, finish reason)."""
        s = self.settings
        async with self._slots:
            own = await self.budget.acquire(estimate)
            self._may_send()
            try:
                response = await self._openai.chat.completions.create(
                    model=s.model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=temperature,
                    max_tokens=max_tokens,
                )
            except openai.OpenAIError as exc:
                raise translate_error(exc, s) from exc
        choices = getattr(response, "choices", None)
        first = choices[0] if choices else None
        message = getattr(first, "message", None)
        # Only ``content``: a ``reasoning_content`` / ``reasoning`` field beside it is never data.
        content = getattr(message, "content", None)
        content = content if isinstance(content, str) else None
        finish = str(getattr(first, "finish_reason", None) or "stop")
        text = answer_proper(content)
        usage = getattr(response, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None)
        output = getattr(usage, "completion_tokens", None)
        if prompt is None:
            prompt = estimate - max_tokens
        if output is None:
            output = estimate_prompt_tokens([{"content": content or ""}])
        # Paid for whether usable or not.
        self.budget.settle(own, prompt + output)
        self.usage.calls += 1
        self.usage.prompt_tokens += prompt
        self.usage.completion_tokens += output
        kind = "no_choices" if first is None else unusable_kind(content, text, finish)
        if kind == "refused":
            raise ContentRefused(
                f"LLM API at {s.base_url}: reply withheld by the provider's content filter "
                f"(finish_reason {finish!r})",
                provider_message=f"finish_reason {finish}", service=SERVICE, status=200,
            )
        if kind is not None:
            raise UnusableReply(f"LLM API at {s.base_url}: unusable reply ({kind}): {ADVICE[kind]}",
                                kind=kind, service=SERVICE, status=200)
        return text, prompt, output, finish

    def refusals_dominate(self) -> bool:
        """Whether the provider refused at least ``max_refused_share`` of the
        last ``refusal_window`` calls: going on would burn the quota on refusals."""
        return self.usage.refused_share() >= self.settings.max_refused_share

    async def probe(self, *, chat: bool = False) -> None:
        """One cheap request to fail early with a readable error: lists the
        models (and checks ours is offered), or, where listing is not
        supported, asks for one token. ``chat=True`` always asks for the token:
        listing models does not tell whether the quota is back. Not retried;
        raises ServiceError."""
        s = self.settings
        if chat:
            await self._ping(offered=[])
            return
        try:
            async with self._slots:
                await self.budget.acquire(1)
                self._may_send()
                page = await self._openai.models.list()
            offered = [m.id for m in page.data]
        except openai.NotFoundError:
            offered = []  # no /models here: a one-token chat will tell
        except openai.OpenAIError as exc:
            raise translate_error(exc, s) from exc
        if s.model in offered:
            return
        await self._ping(offered)

    async def _ping(self, offered: list[str]) -> None:
        """Ask for one token; a FatalServiceError lists the ``offered`` models."""
        s = self.settings
        try:
            async with self._slots:
                await self.budget.acquire(estimate_prompt_tokens([{"content": "ping"}]) + 1)
                self._may_send()
                await self._openai.chat.completions.create(
                    model=s.model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
                )
        except openai.OpenAIError as exc:
            err = translate_error(exc, s)
            if isinstance(err, FatalServiceError) and offered:
                shown = ", ".join(offered[:10]) + (" …" if len(offered) > 10 else "")
                raise FatalServiceError(
                    f"{err}; models offered there: {shown}", service=SERVICE, status=err.status
                ) from exc
            raise err from exc
