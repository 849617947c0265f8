"""HuixiangDou RAG client: a pool of servers speaking the protocol of
:mod:`pipeline.services.hxd_protocol`, answering with typed outcomes.

:class:`HuixiangdouPool` is the one place where aiohttp errors become the
project's exception tree:

    500/502/503/504, refused or dropped connection -> retried with backoff,
        preferably on another server; then ``Outcome(kind="failed")``, or
        ServersDown when that last attempt put the last server to rest
    200 showing the LLM behind the server failed (``hxd_protocol.llm_outage``,
        or an LLM-judged rejection faster than ``instant_rejection_s``) ->
        the same as a 500: never a skipped or vetoed outcome
    timeout                 -> counted against the server, not retried (the
        server keeps working on the abandoned request, so a retry only queues
        behind it); ``Outcome(kind="failed", state="timeout ...")``
    422, other 4xx          -> FatalServiceError (our request is wrong)
    plain text on the stream endpoint -> FatalServiceError (server runs
        chat_with_repo; use endpoint = "inference" or restart the server)
    every server resting    -> ServersDown naming the URLs (or, when they all
        answer but their LLM does not, saying what to check in its config.ini),
        with ``retry_in``: when the next resting server will be checked
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter

from pipeline.errors import FatalServiceError, ServersDown, StreamFormatError
from pipeline.services.answerer import Kind, Outcome
from pipeline.services.hxd_protocol import (
    LLM_JUDGED,
    START_COMMAND,
    StreamDecoder,
    llm_outage,
    parse_inference_body,
)
from pipeline.settings import HuixiangdouSettings

__all__ = ["HuixiangdouPool", "accepts_connection"]

log = logging.getLogger(__name__)

@dataclass(slots=True)
class _Server:
    url: str
    in_flight: int = 0
    done: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    resting_until: float = 0.0
    last_error: str = ""
    llm_down: bool = False  # the last failure was the LLM behind it, not the server
    next_check: float = 0.0  # while resting: when one question may go to it as a check
    checking: bool = False  # that question is in flight


class _Retry(Exception):
    """One attempt failed in a way worth retrying elsewhere; ``llm_down``: the
    server answered, but the LLM behind it did not."""

    def __init__(self, state: str, *, llm_down: bool = False) -> None:
        super().__init__(state)
        self.state = state
        self.llm_down = llm_down


class _Timeout(Exception):
    """One attempt ran out of time: counts against the server, not retried."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


_RETRY_STATUSES = frozenset({500, 502, 503, 504})

# Seconds a TCP connection may take before a server counts as not up.
_CONNECT_S = 10.0
# _openapi's answer when the GET timed out: the server is busy, not absent.
_BUSY = "busy"

# The state of an attempt the LLM behind the server failed.
LLM_DOWN = "HuixiangDou's own LLM is not answering"
_LLM_ADVICE = (
    "Check the [llm] section of HuixiangDou's config.ini (remote_type, remote_llm_model, "
    "remote_api_key: is the key valid, is its quota or balance left?) and that the LLM service "
    "it names is up. The questions were not recorded: they are asked once it answers."
)


class HuixiangdouPool:
    """Answer questions with one or more HuixiangDou servers (an ``Answerer``).

    Each server takes at most ``concurrency_per_server`` requests at once; a
    request takes the least-loaded healthy server, waiting on a condition
    (never polling) when all are busy. A server failing
    ``failures_before_rest`` times in a row rests up to ``rest_s`` seconds;
    every ``recheck_s`` of its rest one question goes to it as a check, and
    the first one answered ends the rest at once. When every server rests
    and none is due a check, :meth:`ask` raises :class:`ServersDown` with
    ``retry_in``, the seconds until the next check, or None once no server
    has answered for ``down_timeout_s`` (waiting is no use: the run stops,
    resumably). :attr:`slots` is how many requests the pool takes at once.

    An injected ``session`` is used as given (its connector limit is the
    caller's business) and not closed by :meth:`aclose`. ``clock``, ``sleep``
    and ``rng`` are seams for tests: rests, backoff and jitter without waiting.
    """

    backend = "huixiangdou"

    def __init__(
        self,
        settings: HuixiangdouSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not settings.urls:
            raise ValueError("HuixiangdouSettings.urls is empty")
        self._settings = settings
        self._servers = [_Server(url.rstrip("/")) for url in settings.urls]
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._cond = asyncio.Condition()
        self._down_since: float | None = None  # every server resting since, without an answer
        self._limiter = AsyncLimiter(settings.rpm, 60) if settings.rpm else None
        path = "/huixiangdou_stream" if settings.endpoint == "stream" else "/huixiangdou_inference"
        self._path = path
        self.slots = len(self._servers) * settings.concurrency_per_server
        # Seconds of a GET /openapi.json at start-up before saying the server is busy.
        self.busy_notice_s = 5.0

    # ---------------------------------------------------------------- session

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily: aiohttp wants a running loop at creation time.
        if self._session is None:
            s = self._settings
            # Room for every slot plus one probe per server, so the connector
            # never becomes a hidden cap below the configured concurrency.
            limit = len(self._servers) * (s.concurrency_per_server + 1)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=s.timeout_s),
            )
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session if this pool created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ probe

    async def probe(self) -> str:
        """Say which servers are up; rest the others so the run starts without them.

        A server that accepts a TCP connection is up, however long it then
        takes to answer: the 2024 server blocks every request, ``GET
        /openapi.json`` included, while it answers one, and a stopped run
        leaves its queue behind. So the GET may take up to ``timeout_s`` (the
        answer timeout); past ``busy_notice_s`` a warning says whom it waits
        for and why, and a server still silent at the end counts as up and
        busy. A server whose ``/openapi.json`` shows it is not HuixiangDou is
        not up. This is what ``[rag] backend = "auto"`` asks.

        Raises :class:`ServersDown` naming every URL and how to start
        HuixiangDou when none is up.
        """
        results = await asyncio.gather(*(self._probe_one(s) for s in self._servers))
        now = self._clock()
        up = [(s, note) for s, (ok, note) in zip(self._servers, results) if ok]
        down = [(s, note) for s, (ok, note) in zip(self._servers, results) if not ok]
        async with self._cond:
            for s, reason in down:
                s.resting_until = now + self._settings.rest_s
                s.next_check = now + min(self._settings.recheck_s, self._settings.rest_s)
                s.last_error = reason
        total = len(self._servers)
        if not up:
            listing = "; ".join(f"{s.url} ({r})" for s, r in down)
            raise ServersDown(
                f"no HuixiangDou server is up: {listing}. "
                f"Start one with `{START_COMMAND}` (it listens on port 23333; later "
                "releases: `python3 -m huixiangdou.api_server`), or fix [huixiangdou] urls "
                "in the settings file.",
                service="huixiangdou",
            )
        msg = f"{len(up)} of {total} HuixiangDou servers up: " + ", ".join(
            s.url + (f" ({note})" if note else "") for s, note in up
        )
        if down:
            msg += "; not up: " + "; ".join(f"{s.url} ({r})" for s, r in down)
        return msg

    async def _probe_one(self, server: _Server) -> tuple[bool, str]:
        """``(up, note)``: up with an empty note when ready, with a note when
        busy; not up with the reason."""
        refused = await accepts_connection(server.url, min(_CONNECT_S, self._settings.timeout_s))
        if refused is not None:
            return False, refused
        started = self._clock()
        get = asyncio.ensure_future(self._openapi(server))
        try:
            done, _ = await asyncio.wait({get}, timeout=self.busy_notice_s)
            if not done:
                log.warning(
                    "HuixiangDou at %s accepted the connection but has not answered GET /openapi.json "
                    "in %.0f s: it is busy answering (it serves one request at a time and nothing "
                    "else meanwhile; a run that was stopped may have left a queue there). Waiting "
                    "for it, up to %.0f s ([huixiangdou] timeout_s)",
                    server.url, self.busy_notice_s, self._settings.timeout_s,
                )
            reason = await get
        finally:
            get.cancel()
        if reason is _BUSY:
            log.warning("HuixiangDou at %s is still busy after %.0f s; counting it up, as it "
                        "accepts connections", server.url, self._settings.timeout_s)
            return True, f"busy: GET /openapi.json unanswered after {self._settings.timeout_s:g}s"
        if reason is not None:
            return False, reason
        waited = self._clock() - started
        if waited >= self.busy_notice_s:
            return True, f"busy: GET /openapi.json answered after {waited:.0f}s"
        return True, ""

    async def _openapi(self, server: _Server) -> str | None:
        """GET /openapi.json: None when it shows HuixiangDou's routes, :data:`_BUSY`
        when it timed out, else why the server is not HuixiangDou."""
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
        try:
            async with self._http().get(server.url + "/openapi.json", timeout=timeout) as r:
                if r.status != 200:
                    return f"HTTP {r.status}"
                try:
                    spec = await r.json(content_type=None)
                except ValueError:
                    return "answers, but /openapi.json is not JSON: not a HuixiangDou server?"
        except TimeoutError:
            return _BUSY
        except aiohttp.ClientError as e:
            return _describe_client_error(e)
        paths = spec.get("paths") if isinstance(spec, dict) else None
        if isinstance(paths, dict) and self._path not in paths:
            return f"no {self._path} route: not a HuixiangDou server?"
        return None

    # ------------------------------------------------------------------ slots

    def _all_resting(self, now: float) -> bool:
        return all(s.resting_until > now for s in self._servers)

    def _down(self, now: float) -> ServersDown:
        """Every server rests: say why and when the next one is checked, or,
        once none has answered for ``down_timeout_s``, that waiting is no use."""
        parts = []
        for s in self._servers:
            left = max(0.0, s.resting_until - now)
            parts.append(f"{s.url} (resting {left:.0f}s more; last error: {s.last_error or 'none'})")
        listing = "; ".join(parts)
        if all(s.llm_down for s in self._servers):
            message = (f"every HuixiangDou server answers, but the LLM behind it does not: {listing}. "
                       f"{_LLM_ADVICE}")
        else:
            message = (f"every HuixiangDou server is down or resting: {listing}. Is HuixiangDou "
                       f"running? Start it with `{START_COMMAND}`.")
        if self._down_since is None:
            self._down_since = now
        timeout = self._settings.down_timeout_s
        left = self._down_since + timeout - now
        if left <= 0:
            return ServersDown(f"{message} No answer for {timeout:.0f} s ([huixiangdou] down_timeout_s).",
                               service="huixiangdou", retry_in=None)
        checks = [max(0.0, s.next_check - now) for s in self._servers if not s.checking]
        retry_in = min(min(checks) if checks else self._settings.recheck_s, left)
        message += (f" Waiting for one to answer (checked every {self._settings.recheck_s:.0f} s; "
                    f"the run stops after {timeout:.0f} s of this, resumable).")
        return ServersDown(message, service="huixiangdou", retry_in=retry_in)

    async def _acquire(self, avoid: set[str]) -> _Server:
        cap = self._settings.concurrency_per_server
        async with self._cond:
            while True:
                now = self._clock()
                free = [
                    (s.url in avoid, s.in_flight, i, s)
                    for i, s in enumerate(self._servers)
                    if s.resting_until <= now and s.in_flight < cap
                ]
                if free:
                    server = min(free, key=lambda t: t[:3])[3]
                    server.in_flight += 1
                    return server
                for server in self._servers:
                    if (server.resting_until > now and not server.checking and server.next_check <= now
                            and server.in_flight < cap and server.url not in avoid):
                        # A resting server is due a check: this question is it.
                        server.checking = True
                        server.in_flight += 1
                        return server
                if self._all_resting(now):
                    raise self._down(now)
                await self._cond.wait()

    async def _release(self, server: _Server, error: str | None, *, llm_down: bool = False) -> None:
        async with self._cond:
            server.in_flight -= 1
            checked, server.checking = server.checking, False
            now = self._clock()
            if error is None:
                server.done += 1
                server.consecutive_failures = 0
                server.llm_down = False
                self._down_since = None
                if server.resting_until > now:
                    server.resting_until = 0.0
                    log.warning("HuixiangDou server %s answers again; its rest is over", server.url)
            else:
                server.failures += 1
                server.consecutive_failures += 1
                server.last_error = error
                server.llm_down = llm_down
                if checked:
                    server.next_check = now + self._settings.recheck_s
                elif server.consecutive_failures >= self._settings.failures_before_rest:
                    server.consecutive_failures = 0
                    server.resting_until = now + self._settings.rest_s
                    server.next_check = now + min(self._settings.recheck_s, self._settings.rest_s)
                    log.warning(
                        "HuixiangDou server %s failed %d times in a row (%s); resting it up to %.0fs, "
                        "sending it one question every %.0fs to see it back",
                        server.url, self._settings.failures_before_rest, error,
                        self._settings.rest_s, self._settings.recheck_s,
                    )
            # Everyone re-checks: a slot freed, or every server may now be resting.
            self._cond.notify_all()

    # -------------------------------------------------------------------- ask

    async def ask(self, question: str) -> Outcome:
        """Answer one question; a per-question failure is an outcome, not an exception.

        Raises FatalServiceError (our request is wrong, or the server's
        pipeline does not fit the endpoint) and ServersDown (every server
        resting).
        """
        s = self._settings
        started = self._clock()
        avoid: set[str] = set()
        attempts = 0
        state = ""
        url = ""
        for attempt in range(s.max_retries + 1):
            server = await self._acquire(avoid)
            url = server.url
            attempts += 1
            error: str | None = None
            llm_down = False
            try:
                if self._limiter is not None:
                    await self._limiter.acquire()
                kind, answer, refs, state = await self._call(server.url, question)
            except _Retry as e:
                error = state = e.state
                llm_down = e.llm_down
            except _Timeout as e:
                await self._release(server, e.state)
                return Outcome(
                    kind="failed", state=e.state, server=url, attempts=attempts,
                    seconds=self._clock() - started,
                )
            except BaseException:
                # Fatal errors and cancellation: give the slot back, count nothing.
                async with self._cond:
                    server.in_flight -= 1
                    server.checking = False
                    self._cond.notify_all()
                raise
            await self._release(server, error, llm_down=llm_down)
            if error is None:
                return Outcome(
                    kind=kind, answer=answer, refs=refs, state=state, server=url,
                    attempts=attempts, seconds=self._clock() - started,
                )
            avoid.add(server.url)
            if attempt < s.max_retries:
                now = self._clock()
                if self._all_resting(now):
                    # No point sleeping first: nothing can take the retry.
                    raise self._down(now)
                delay = s.backoff_base_s * (2 ** attempt) * (0.5 + self._rng.random())
                log.debug("HuixiangDou %s: %s; retry %d in %.1fs", url, error, attempt + 1, delay)
                await self._sleep(delay)
        now = self._clock()
        if self._all_resting(now):
            # Its last attempt put the last server to rest: the question is not
            # to blame, so it waits with the others instead of being written off.
            raise self._down(now)
        return Outcome(
            kind="failed", state=state, server=url, attempts=attempts,
            seconds=now - started,
        )

    async def _call(self, url: str, question: str) -> tuple[Kind, str, tuple[str, ...], str]:
        """One HTTP request: translate every aiohttp failure in this one place,
        and an answer showing the LLM behind the server failed into a retry."""
        # The server's own time, not the injected clock: it judges the server.
        sent = time.monotonic()
        body = await self._request(url, question)
        took = time.monotonic() - sent
        if isinstance(body, _NotJson):
            return "failed", "", (), str(body)
        outage = llm_outage(body)
        kind, answer, refs, state = parse_inference_body(body)
        limit = self._settings.instant_rejection_s
        if outage is None and kind == "skipped" and state in LLM_JUDGED and took < limit:
            outage = f"'{state}' in {took * 1000:.0f} ms, faster than its LLM can judge"
        if outage is not None:
            raise _Retry(f"{LLM_DOWN} ({outage})", llm_down=True)
        return kind, answer, refs, state

    async def _request(self, url: str, question: str) -> Any:
        """The decoded body of one request (a stream's last document)."""
        try:
            async with self._http().post(
                url + self._path, json={"text": question, "image": ""}
            ) as resp:
                if resp.status in _RETRY_STATUSES:
                    await resp.read()
                    raise _Retry(f"HTTP {resp.status}")
                if resp.status == 422:
                    detail = (await resp.text())[:500]
                    raise FatalServiceError(
                        f"HuixiangDou at {url} rejected our request body with 422 (a bug in this "
                        f"client, please report it): {detail}",
                        service="huixiangdou", status=422,
                    )
                if resp.status != 200:
                    text = (await resp.text())[:200]
                    raise FatalServiceError(
                        f"HuixiangDou at {url}{self._path} answered HTTP {resp.status}: {text!r}. "
                        "Check [huixiangdou] urls (is it a HuixiangDou server, started with "
                        f"`{START_COMMAND}`?)",
                        service="huixiangdou", status=resp.status,
                    )
                if self._path == "/huixiangdou_stream":
                    return await self._read_stream(url, resp)
                raw = await resp.read()
        except TimeoutError as e:
            raise _Timeout(f"timeout after {self._settings.timeout_s:g}s") from e
        except aiohttp.ClientError as e:
            raise _Retry(_describe_client_error(e)) from e
        try:
            return json.loads(raw)
        except ValueError:
            return _NotJson(f"response is not JSON: {raw[:60]!r}")

    async def _read_stream(self, url: str, resp: aiohttp.ClientResponse) -> Any:
        decoder = StreamDecoder()
        last: Any = None
        try:
            async for chunk in resp.content.iter_any():
                docs = decoder.feed(chunk)
                if docs:
                    last = docs[-1]
            decoder.close()
        except StreamFormatError as e:
            # Chosen over a silent fall-back to /huixiangdou_inference: that would
            # ask every question twice on a server that answers one at a time.
            raise FatalServiceError(
                f"HuixiangDou at {url} sent a stream that is not JSON documents ({e}). "
                "Stream mode needs the chat_in_group pipeline: restart the server with "
                f"`{START_COMMAND}`, or set [huixiangdou] endpoint = \"inference\".",
                service="huixiangdou",
            ) from e
        if last is None:
            return _NotJson("empty stream")
        return last

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per server URL: in_flight, done, failures, resting_for_s, last_error."""
        now = self._clock()
        return {
            s.url: {
                "in_flight": s.in_flight,
                "done": s.done,
                "failures": s.failures,
                "resting_until": s.resting_until if s.resting_until > now else None,
                "resting_for_s": max(0.0, s.resting_until - now),
                "last_error": s.last_error,
            }
            for s in self._servers
        }


async def accepts_connection(url: str, timeout: float) -> str | None:
    """None when ``url``'s host accepts a TCP connection, else why not. No
    HTTP request is sent: nothing queues behind a busy server. This is the
    test of "is HuixiangDou up" (a busy server is up)."""
    u = urllib.parse.urlsplit(url)
    if not u.hostname:
        return f"no host in {url!r}"
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(u.hostname, port), timeout)
    except TimeoutError:
        return f"connection timed out after {timeout:g}s"
    except OSError as e:
        return f"connection refused ({e.strerror or e})"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


class _NotJson(str):
    """A body that is no answer at all: the state saying so."""


def _describe_client_error(e: aiohttp.ClientError) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"connection refused ({e.os_error.strerror or e.os_error})"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "connection dropped"
    if isinstance(e, aiohttp.ClientPayloadError):
        return "connection dropped mid-response"
    return f"connection error ({type(e).__name__})"
