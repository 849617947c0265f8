"""A fake HuixiangDou server on 127.0.0.1, faithful to docs/huixiangdou-protocol.md.

In-process::

    async with FakeHuixiangdou(script={"q": "vetoed"}) as fake:
        fake.url, fake.counts["q"], fake.peak_in_flight

or ``async with serve_fake_huixiangdou(...) as url`` when only the URL is
wanted. As a subprocess (benchmarks)::

    python -m tests.fakes.huixiangdou_server --port 0 --latency 0.2 1.0

prints its URL on the first line of stdout and serves until SIGINT/SIGTERM;
``GET /_fake/stats`` returns what it saw (per-question counts, in flight).

What it imitates, point by point as seen on a live 2024 server:

- ``POST /huixiangdou_inference`` blocks the whole server while it runs (the
  real one blocks its event loop): every other request, ``GET /openapi.json``
  included, waits behind it and the queue ahead of it. Its body is raw UTF-8
  with ``content-type: application/json``.
- ``POST /huixiangdou_stream`` runs concurrently; one HTTP chunk per
  cumulative JSON document (``max_chunk`` cuts them at seeded random byte
  boundaries instead), non-ASCII escaped, 13-26 KB each because ``debug``
  carries prompts and chunks, ``text/event-stream; charset=utf-8``, and the
  body ends a tail (2 s real) after the last document, whose ``debug`` lacks
  the safety entries the inference body has.
- FastAPI's 422s exactly: ``model_attributes_type`` for a body without a JSON
  content type, ``json_invalid`` with ``loc ["body", pos]`` and ``ctx``;
  FastAPI's JSON 404/405 bodies.
- Every state sequence of the protocol: vetoes keep the vetoed text in each
  veto step, rejections are one step with no ``Init state`` before them,
  irrelevant material is ``Init state`` x4 with no refs; the chat_with_repo
  bare string; 500s and dropped connections; short questions refused.
- An outage of the LLM behind the server (``llm_down = "2024-09"`` or
  ``"2024-10"``): every question gets that release's outage signature, with
  its ``debug``, at once.
- Timing: an answered question takes 3-6 s on a real server, a rejection
  0.4-1 s, the stream's tail 2 s; the fake takes those times ``time_scale``
  (default 0.001) times, or ``latency`` seconds for every request when set.

Which scenario a question gets: ``script[question]`` (one name, or a list
consumed one per request with the last repeating), else ``responder(question)``,
else ``"answered"``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal

from aiohttp import web

__all__ = [
    "SCENARIOS",
    "STATES",
    "FakeHuixiangdou",
    "default_answer",
    "scenario_steps",
    "serve_fake_huixiangdou",
]

Shape = Literal["chat_in_group", "chat_with_repo"]

REFS = ["wukong.md"]

# The protocol's exact state strings.
STATES = {
    "init": "Init state",
    "success": "success",
    "short": "Query length too short",
    "not_question": "query is not a question",
    "no_topic": "The question does not have a topic. It might be a meaningless sentence.",
    "unrelated": "Topics unrelated to the knowledge base. Updating good_questions and "
    "bad_questions can improve accuracy.",
    "irrelevant_answer": "Irrelevant answer.",
    "prohibited": "Reply has a high relevance to prohibited topics.",
    "web_search_fail": "Web search fail, please check network, TOKEN and quota",
    "no_search_result": "No search result.",
    "sourcegraph": "SourceGraph not result, please check token or input query",
    "sourcegraph_llm": "LLM not response query with sg search",
}

# A live 2024 server with a fast LLM behind it, in seconds: an answer is about
# five sequential LLM calls, a rejection one; the stream's last document comes
# this long before its body ends (the safety checks send nothing).
ANSWER_S = (3.0, 6.0)
REJECTION_S = (0.4, 1.0)
STREAM_TAIL_S = 2.0
# Bytes of each stream document once the pipeline has retrieved material.
DOC_BYTES = (13_000, 26_000)

# Scenarios that end before any answer is written: they take a rejection's time.
_REJECTIONS = frozenset({"short", "not_question", "no_topic", "unrelated", "error_500", "error_422", "drop"})
# The LLM behind the server is down: its calls fail at once.
_INSTANT = frozenset({"outage_2024_09", "outage_2024_10"})
LLM_DOWN = {"2024-09": "outage_2024_09", "2024-10": "outage_2024_10"}


def default_answer(question: str) -> str:
    """A deterministic, grounded-looking answer of 40+ characters."""
    return (
        f"关于「{question}」：根据知识库记载，《黑神话：悟空》由游戏科学开发，"
        "于2024年8月20日发行，玩家扮演天命人踏上西行之路。"
    )


VETOED_ANSWER = "我不知道这个问题的答案。"


def _step(state: str, response: str = "", refs: Sequence[str] = REFS) -> dict[str, Any]:
    return {"state": STATES.get(state, state), "response": response, "refs": list(refs)}


def _answered(q: str) -> list[dict[str, Any]]:
    return [_step("init"), _step("success", default_answer(q))]


# What the server's LLM says when the retrieved text lacks the answer: the
# server passes it on as a "success", and so do real deployments.
REFUSAL_ANSWER = "抱歉，资料中没有关于这个问题的信息，无法回答。"


def _with_reference_list(q: str) -> list[dict[str, Any]]:
    # The LLM wrote its own references list ahead of the answer.
    return [_step("init"), _step("success", f"参考资料：\n- 角色设定.md\n- wukong.md\n\n{default_answer(q)}")]


def _vetoed(state: str, answer: Callable[[str], str]) -> Callable[[str], list[dict[str, Any]]]:
    # Each veto step still carries the answer it vetoes.
    return lambda q: [_step("init"), _step("success", answer(q)), *[_step(state, answer(q))] * 3]


def _then(state: str) -> Callable[[str], list[dict[str, Any]]]:
    return lambda q: [_step("init", refs=[]), _step(state, refs=[])]


def _rejected(state: str) -> Callable[[str], list[dict[str, Any]]]:
    # One step, no "Init state" before it.
    return lambda q: [_step(state, refs=[])]


# Scenario name -> the ``step`` list it produces. "error_500", "error_422"
# (a server whose request model we no longer match) and "drop" are handled
# before any body is built.
SCENARIOS: dict[str, Callable[[str], list[dict[str, Any]]]] = {
    "answered": _answered,
    "refusal_answer": lambda q: [_step("init"), _step("success", REFUSAL_ANSWER)],
    "reference_list": _with_reference_list,
    "vetoed": _vetoed("irrelevant_answer", lambda q: VETOED_ANSWER),
    "safety": _vetoed("prohibited", default_answer),
    "irrelevant_material": lambda q: [_step("init", refs=[])] * 4,
    "short": _rejected("short"),
    "not_question": _rejected("not_question"),
    "no_topic": _then("no_topic"),
    "unrelated": _then("unrelated"),
    "web_search_fail": _then("web_search_fail"),
    "no_search_result": _then("no_search_result"),
    "sourcegraph": _then("sourcegraph"),
    "sourcegraph_llm": _then("sourcegraph_llm"),
    # The LLM behind the server is down. 2024-09: judged "not a question" (the
    # scoring call failed; see scenario_debug for the mark it leaves).
    "outage_2024_09": _rejected("not_question"),
    # 2024-10: an empty success, then vetoed as irrelevant.
    "outage_2024_10": lambda q: [_step("init"), _step("success", ""), *[_step("irrelevant_answer")] * 3],
    "error_500": lambda q: [],
    "error_422": lambda q: [],
    "drop": lambda q: [],
}


def scenario_steps(name: str, question: str) -> list[dict[str, Any]]:
    """The ``step`` list scenario ``name`` answers ``question`` with."""
    try:
        return SCENARIOS[name](question)
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None


def _is_question(question: str, relation: str, score: int) -> dict[str, Any]:
    return {"input": question, "default": 3, "relation": relation, "throttle": 6, "output": score}


def scenario_debug(name: str, question: str, *, safety: bool = True) -> dict[str, Any]:
    """The ``debug`` object of scenario ``name`` (before stream padding).

    The question-scoring entry carries the model's text in ``relation``; in
    the 2024-09 outage it is empty and the score stays at its default.
    ``safety``: with the safety checks' entries (the inference body has them,
    the stream's last document does not)."""
    if name == "short":
        return {}
    if name == "outage_2024_09":
        return {"PreprocNode_is_question": _is_question(question, "", 3)}
    if name == "not_question":
        return {"PreprocNode_is_question": _is_question(question, "这是一句陈述，不是问题。得分：2", 2)}
    debug: dict[str, Any] = {"PreprocNode_is_question": _is_question(question, "这是一个问题。得分：9", 9)}
    if name == "outage_2024_10":
        debug["PreprocNode_is_question"] = _is_question(question, "", 7)
    if safety and any(s["state"] == "success" for s in SCENARIOS[name](question)):
        debug["SecurityNode"] = {"relevance": "0", "prohibited": False}
    return debug


_OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "FastAPI", "version": "0.1.0"},
    "paths": {
        "/huixiangdou_inference": {"post": {"summary": "Huixiangdou Inference"}},
        "/huixiangdou_stream": {"post": {"summary": "Huixiangdou Stream"}},
    },
}

_JSON = "application/json"


def _json(value: Any, status: int = 200) -> web.Response:
    # FastAPI's JSONResponse: raw UTF-8, no charset parameter.
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": _JSON})


def _detail(kind: str, loc: list[Any], msg: str, value: Any, **extra: Any) -> web.Response:
    return _json({"detail": [{"type": kind, "loc": loc, "msg": msg, "input": value, **extra}]}, 422)


@web.middleware
async def _fastapi_errors(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """FastAPI's JSON bodies for unknown paths and methods."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPMethodNotAllowed:
        return _json({"detail": "Method Not Allowed"}, 405)
    except web.HTTPNotFound:
        return _json({"detail": "Not Found"}, 404)


class FakeHuixiangdou:
    """One fake server. Attributes may be changed between (or during) requests."""

    def __init__(
        self,
        *,
        script: Mapping[str, str | Sequence[str]] | None = None,
        responder: Callable[[str], str] | None = None,
        shape: Shape = "chat_in_group",
        latency: float | tuple[float, float] = 0.0,
        time_scale: float = 0.001,
        llm_down: str | None = None,
        seed: int = 0,
        min_length: int = 6,
        ascii_escape: bool = True,
        max_chunk: int | None = None,
        gate: asyncio.Event | None = None,
        hold: asyncio.Event | None = None,
        port: int = 0,
    ) -> None:
        self.script: dict[str, str | Sequence[str]] = dict(script or {})
        self.responder = responder
        self.think = False  # answers wrapped in a <think> block, as from a reasoning model behind the server
        self.shape: Shape = shape
        self.latency = latency  # when set: seconds of every request, instead of time_scale's
        self.time_scale = time_scale  # times of the live server (ANSWER_S, REJECTION_S, STREAM_TAIL_S)
        self.llm_down = llm_down  # "2024-09" / "2024-10": the LLM behind the server is down
        self.seed = seed
        self.min_length = min_length  # 2024-09 refused questions under 6 characters
        self.ascii_escape = ascii_escape  # of the stream (the inference body is raw UTF-8)
        self.max_chunk = max_chunk  # None: one HTTP chunk per stream document, as the real one
        self.gate = gate  # when set, requests wait for it after being counted
        # When set, an inference holds the whole server until it is set: a long answer.
        self.hold = hold
        self.port = port
        self.url = ""
        self.counts: Counter[str] = Counter()  # valid requests per question text
        self.requests = 0
        self.invalid = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.blocked = 0  # requests waiting for a running inference to finish
        self.delays: list[tuple[str, float]] = []  # (scenario, seconds it took), per request
        self._served: Counter[str] = Counter()  # scripted sequence position per question
        self._rng = random.Random(seed)
        # Held while an inference runs: the real server's event loop is blocked then.
        self._loop = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        """Bind 127.0.0.1 (port 0 = a free one); return the base URL."""
        app = web.Application(middlewares=[_fastapi_errors])
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_post("/huixiangdou_inference", self._inference)
        app.router.add_post("/huixiangdou_stream", self._stream)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for event in (self.gate, self.hold):
            if event is not None:
                event.set()  # never leave a handler waiting at shutdown
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeHuixiangdou:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_in_flight(self, n: int) -> None:
        """Return once at least ``n`` requests are inside the server at once."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight >= n)

    async def wait_blocked(self, n: int) -> None:
        """Return once at least ``n`` requests wait behind a running inference."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.blocked >= n)

    # -------------------------------------------------------------- helpers

    def scenario_for(self, question: str) -> str:
        if self.min_length and len(question) < self.min_length:
            return "short"  # refused before any LLM call: an outage does not show
        entry = self.script.get(question)
        if entry is not None:
            if isinstance(entry, str):
                scenario = entry
            else:
                i = self._served[question]
                self._served[question] += 1
                scenario = entry[min(i, len(entry) - 1)]
        elif self.responder is not None:
            scenario = self.responder(question)
        else:
            scenario = "answered"
        if self.llm_down and scenario not in ("error_500", "error_422", "drop"):
            return LLM_DOWN[self.llm_down]
        return scenario

    def _delay(self, scenario: str) -> float:
        """Seconds this request takes, recorded in :attr:`delays`."""
        lat = self.latency
        if lat:
            delay = self._rng.uniform(*lat) if isinstance(lat, tuple) else lat
        elif scenario in _INSTANT:
            delay = 0.0
        else:
            span = REJECTION_S if scenario in _REJECTIONS else ANSWER_S
            delay = self._rng.uniform(*span) * self.time_scale
        self.delays.append((scenario, delay))
        return delay

    def _body(self, steps: list[dict[str, Any]], debug: dict[str, Any]) -> Any:
        if self.think:  # the server's own LLM is a reasoning model: its answers carry the reasoning
            steps = [{**st, "response": f"<think>\n草稿：先想想 NOT_IN_MATERIAL 的情形……\n</think>\n\n{st['response']}"}
                     if st.get("response") else st for st in steps]
        if self.shape == "chat_with_repo":
            last = steps[-1] if steps else {}
            response = last.get("response") or ""
            if last.get("state") == "success" and response:
                refs = "".join(f"* {r}\r\n" for r in last.get("refs") or [])
                return f"**References:**\r\n{refs}\r\n{response}"
            return ""  # no answer to show (a veto's kept text is chat_in_group's)
        return {"step": steps, "debug": debug}

    async def _enter(self) -> None:
        async with self._changed:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self._changed.notify_all()

    async def _leave(self) -> None:
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def _server_loop(self) -> AsyncIterator[None]:
        """Hold the server, as the real one's blocked event loop does, once
        every inference ahead has finished."""
        if self._loop.locked():
            async with self._changed:
                self.blocked += 1
                self._changed.notify_all()
            try:
                await self._loop.acquire()
            finally:
                async with self._changed:
                    self.blocked -= 1
                    self._changed.notify_all()
        else:
            await self._loop.acquire()
        try:
            yield
        finally:
            self._loop.release()

    async def _validate(self, request: web.Request) -> str | web.Response:
        """The question, or FastAPI's 422 for a body it would reject."""
        raw = await request.read()
        if request.content_type != _JSON and not request.content_type.endswith("+json"):
            # FastAPI reads a body without a JSON content type as one string.
            return _detail(
                "model_attributes_type", ["body"],
                "Input should be a valid dictionary or object to extract fields from",
                raw.decode("utf-8", "replace"),
            )
        try:
            body = json.loads(raw)
        except ValueError as e:
            pos = getattr(e, "pos", 0)
            msg = getattr(e, "msg", str(e))
            return _detail("json_invalid", ["body", pos], "JSON decode error", {}, ctx={"error": msg})
        if not isinstance(body, dict):
            return _detail(
                "model_attributes_type", ["body"],
                "Input should be a valid dictionary or object to extract fields from", body,
            )
        if "text" not in body:
            return _detail("missing", ["body", "text"], "Field required", body)
        if not isinstance(body["text"], str):
            return _detail("string_type", ["body", "text"], "Input should be a valid string", body["text"])
        if "image" in body and not isinstance(body["image"], str):
            return _detail("string_type", ["body", "image"], "Input should be a valid string", body["image"])
        return body["text"]

    # ------------------------------------------------------------- handlers

    async def _openapi(self, request: web.Request) -> web.Response:
        async with self._server_loop():
            return _json(_OPENAPI)

    def stats(self) -> dict[str, Any]:
        """What the server saw so far; ``counts`` maps question text to valid requests."""
        return {
            "counts": dict(self.counts),
            "requests": self.requests,
            "invalid": self.invalid,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
        }

    async def _stats(self, request: web.Request) -> web.Response:
        # Not part of HuixiangDou (and never blocked): a test reads a subprocess fake's counts.
        return _json(self.stats())

    async def _begin(self, request: web.Request) -> tuple[str, str] | web.Response:
        self.requests += 1
        question = await self._validate(request)
        if isinstance(question, web.Response):
            self.invalid += 1
            return question
        self.counts[question] += 1
        return question, self.scenario_for(question)

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        await self._enter()
        try:
            begun = await self._begin(request)
            if isinstance(begun, web.Response):
                return begun
            question, scenario = begun
            if self.gate is not None:
                await self.gate.wait()
            delay = self._delay(scenario)
            async with self._server_loop():  # one inference at a time, and nothing else meanwhile
                if self.hold is not None:
                    await self.hold.wait()
                if delay > 0:
                    await asyncio.sleep(delay)
            if scenario == "error_500":
                return web.Response(status=500, text="Internal Server Error")
            if scenario == "error_422":
                return _detail("missing", ["body", "history"], "Field required", {"text": question})
            if scenario == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            steps = scenario_steps(scenario, question)
            return _json(self._body(steps, scenario_debug(scenario, question)))
        finally:
            await self._leave()

    def _documents(self, scenario: str, question: str, steps: list[dict[str, Any]]) -> list[bytes]:
        """The stream's cumulative documents. Once retrieval ran (after ``Init
        state``) each is padded to 13-26 KB with prompt and chunk text in
        ``debug``, as the real one carries them."""
        if self.shape == "chat_with_repo":
            return [str(self._body(steps[: i + 1], {})).encode() for i in range(len(steps))]
        rng = random.Random(f"{self.seed}:{question}:{self.counts[question]}")
        debug = scenario_debug(scenario, question, safety=False)
        docs = []
        for i in range(len(steps)):
            doc = self._body(steps[: i + 1], dict(debug))
            raw = json.dumps(doc, ensure_ascii=self.ascii_escape).encode()
            if steps[0]["state"] == STATES["init"]:
                want = rng.randint(*DOC_BYTES)
                filler = default_answer(question)
                per_char = len(json.dumps(filler, ensure_ascii=self.ascii_escape).encode()) / len(filler)
                n = max(0, int((want - len(raw) - 40) / per_char))
                doc["debug"]["ChatNode"] = {"prompt": (filler * (n // len(filler) + 1))[:n]}
                raw = json.dumps(doc, ensure_ascii=self.ascii_escape).encode()
            docs.append(raw)
        return docs

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        await self._enter()
        try:
            begun = await self._begin(request)
            if isinstance(begun, web.Response):
                return begun
            question, scenario = begun
            if self.gate is not None:
                await self.gate.wait()
            async with self._server_loop():
                pass  # the request is not even read while an inference blocks the server
            delay = self._delay(scenario)
            if scenario in ("error_500", "error_422"):
                if delay > 0:
                    await asyncio.sleep(delay)
                if scenario == "error_500":
                    return web.Response(status=500, text="Internal Server Error")
                return _detail("missing", ["body", "history"], "Field required", {"text": question})
            steps = scenario_steps(scenario, question)
            docs = self._documents(scenario, question, steps) if steps else [b'{"step": [{"state"']
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
            await resp.prepare(request)
            tail = 0.0
            if any(s.get("state") == "success" for s in steps) and not self.latency:
                tail = STREAM_TAIL_S * self.time_scale  # the safety checks, which send nothing
            pause = (delay - tail) / len(docs) if delay > tail else 0.0
            if scenario == "drop":
                docs = [b"".join(docs)[: sum(map(len, docs)) // 2]]
            rng = random.Random(f"{self.seed}:{question}:{self.counts[question]}:cuts")
            for raw in docs:
                if pause > 0:
                    await asyncio.sleep(pause)
                async with self._server_loop():
                    if self.max_chunk is None:
                        await resp.write(raw)
                        continue
                    pos = 0
                    while pos < len(raw):
                        size = rng.randint(1, self.max_chunk)
                        await resp.write(raw[pos:pos + size])
                        pos += size
            if scenario == "drop":
                assert request.transport is not None
                request.transport.close()
                return resp
            if tail > 0:
                await asyncio.sleep(tail)
            await resp.write_eof()
            return resp
        finally:
            await self._leave()


@contextlib.asynccontextmanager
async def serve_fake_huixiangdou(**kwargs: Any) -> AsyncIterator[str]:
    """Run a :class:`FakeHuixiangdou` for the block; yield its URL."""
    async with FakeHuixiangdou(**kwargs) as fake:
        yield fake.url


async def _main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, nargs="+", default=[0.0],
                   help="seconds per request: one value, or LOW HIGH for a uniform range "
                        "(0: the live server's times, --time-scale times)")
    p.add_argument("--time-scale", type=float, default=0.001,
                   help="times of a live server: answered 3-6 s, rejected 0.4-1 s")
    p.add_argument("--shape", choices=["chat_in_group", "chat_with_repo"], default="chat_in_group")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="answered",
                   help="what every question gets (short questions are still refused)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if len(args.latency) > 2:
        p.error("--latency takes one value or two (LOW HIGH)")
    latency = args.latency[0] if len(args.latency) == 1 else (args.latency[0], args.latency[1])
    scenario = args.scenario
    fake = FakeHuixiangdou(
        port=args.port, latency=latency, time_scale=args.time_scale, shape=args.shape, seed=args.seed,
        responder=lambda q: scenario,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        print(fake.url, flush=True)
        await stop.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
