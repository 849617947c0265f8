"""A fake HuixiangDou server on 127.0.0.1, faithful to docs/huixiangdou-protocol.md.

In-process::

    async with FakeHuixiangdou(script={"q": "vetoed"}) as fake:
        fake.url, fake.counts["q"], fake.peak_in_flight

or ``async with serve_fake_huixiangdou(...) as url`` when only the URL is
wanted. As a subprocess (benchmarks)::

    python -m tests.fakes.huixiangdou_server --port 0 --latency 0.2 1.0

prints its URL on the first line of stdout and serves until SIGINT/SIGTERM;
``GET /_fake/stats`` returns what it saw (per-question counts, in flight).

What it imitates: ``POST /huixiangdou_inference`` serialised behind a lock
(the 2024 server answers one request at a time and queues the rest);
``POST /huixiangdou_stream`` concurrent, cumulative JSON documents with
non-ASCII escaped, cut at seeded random byte boundaries; ``GET
/openapi.json``; FastAPI-style 422s; the chat_in_group ``step`` body or
chat_with_repo's bare string; every state sequence of the protocol; 500s
and dropped connections; short questions refused automatically.

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


def default_answer(question: str) -> str:
    """A deterministic, grounded-looking answer of 40+ characters."""
    return (
        f"关于「{question}」：根据知识库记载，《黑神话：悟空》由游戏科学开发，"
        "于2024年8月20日发行，玩家扮演天命人踏上西行之路。"
    )


def _step(state: str, response: str = "", refs: Sequence[str] = REFS) -> dict[str, Any]:
    return {"state": STATES.get(state, state), "response": response, "refs": list(refs)}


def _answered(q: str) -> list[dict[str, Any]]:
    return [_step("init"), _step("success", default_answer(q))]


def _then(state: str) -> Callable[[str], list[dict[str, Any]]]:
    return lambda q: [_step("init", refs=[]), _step(state, refs=[])]


# Scenario name -> the ``step`` list it produces. "error_500", "error_422"
# (a server whose request model we no longer match) and "drop" are handled
# before any body is built.
SCENARIOS: dict[str, Callable[[str], list[dict[str, Any]]]] = {
    "answered": _answered,
    "vetoed": lambda q: [
        _step("init"), _step("success", "我不知道这个问题的答案。"),
        *[_step("irrelevant_answer")] * 3,
    ],
    "safety": lambda q: [
        _step("init"), _step("success", default_answer(q)), _step("prohibited"),
    ],
    "irrelevant_material": lambda q: [_step("init")] * 4,
    "short": lambda q: [_step("short", refs=[])],
    "not_question": _then("not_question"),
    "no_topic": _then("no_topic"),
    "unrelated": _then("unrelated"),
    "web_search_fail": _then("web_search_fail"),
    "no_search_result": _then("no_search_result"),
    "sourcegraph": _then("sourcegraph"),
    "sourcegraph_llm": _then("sourcegraph_llm"),
    # 2024-09: an LLM outage behind the server, exactly as observed (no other keys).
    "outage_2024_09": lambda q: [{"state": STATES["not_question"]}],
    # 2024-10: the same outage looks like an empty success, then a veto.
    "outage_2024_10": lambda q: [_step("init"), _step("success", ""), _step("irrelevant_answer")],
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


_OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "FastAPI", "version": "0.1.0"},
    "paths": {
        "/huixiangdou_inference": {"post": {"summary": "Huixiangdou Inference"}},
        "/huixiangdou_stream": {"post": {"summary": "Huixiangdou Stream"}},
    },
}


def _detail(kind: str, loc: list[Any], msg: str, value: Any) -> web.Response:
    return web.json_response(
        {"detail": [{"type": kind, "loc": loc, "msg": msg, "input": value}]}, status=422
    )


class FakeHuixiangdou:
    """One fake server. Attributes may be changed between (or during) requests."""

    def __init__(
        self,
        *,
        script: Mapping[str, str | Sequence[str]] | None = None,
        responder: Callable[[str], str] | None = None,
        shape: Shape = "chat_in_group",
        latency: float | tuple[float, float] = 0.0,
        seed: int = 0,
        min_length: int = 6,
        ascii_escape: bool = True,
        max_chunk: int = 64,
        gate: asyncio.Event | None = None,
        port: int = 0,
    ) -> None:
        self.script: dict[str, str | Sequence[str]] = dict(script or {})
        self.responder = responder
        self.shape: Shape = shape
        self.latency = latency
        self.seed = seed
        self.min_length = min_length  # 2024-09 refused questions under 6 characters
        self.ascii_escape = ascii_escape
        self.max_chunk = max_chunk
        self.gate = gate  # when set, requests wait for it after being counted
        self.port = port
        self.url = ""
        self.counts: Counter[str] = Counter()  # valid requests per question text
        self.requests = 0
        self.invalid = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._served: Counter[str] = Counter()  # scripted sequence position per question
        self._rng = random.Random(seed)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        """Bind 127.0.0.1 (port 0 = a free one); return the base URL."""
        app = web.Application()
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
        if self.gate is not None:
            self.gate.set()  # never leave a handler waiting at shutdown
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

    # -------------------------------------------------------------- helpers

    def scenario_for(self, question: str) -> str:
        if self.min_length and len(question) < self.min_length:
            return "short"
        entry = self.script.get(question)
        if entry is not None:
            if isinstance(entry, str):
                return entry
            i = self._served[question]
            self._served[question] += 1
            return entry[min(i, len(entry) - 1)]
        if self.responder is not None:
            return self.responder(question)
        return "answered"

    def _dumps(self, value: Any) -> str:
        return json.dumps(value, ensure_ascii=self.ascii_escape)

    def _body(self, steps: list[dict[str, Any]]) -> Any:
        if self.shape == "chat_with_repo":
            last = steps[-1] if steps else {}
            response = last.get("response") or ""
            if last.get("state") == "success" and response:
                refs = "".join(f"* {r}\r\n" for r in last.get("refs") or [])
                return f"**References:**\r\n{refs}\r\n{response}"
            return response
        return {"step": steps, "debug": {"fake": True}}

    async def _latency(self) -> None:
        lat = self.latency
        delay = self._rng.uniform(*lat) if isinstance(lat, tuple) else lat
        if delay > 0:
            await asyncio.sleep(delay)

    async def _enter(self) -> None:
        async with self._changed:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self._changed.notify_all()

    async def _leave(self) -> None:
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    async def _validate(self, request: web.Request) -> str | web.Response:
        """The question, or FastAPI's 422 for a body it would reject."""
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _detail("json_invalid", ["body", 0], "JSON decode error", {})
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
        return web.json_response(_OPENAPI)

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
        # Not part of HuixiangDou: lets a test read a subprocess fake's counts.
        return web.json_response(self.stats())

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
            async with self._lock:  # one inference at a time, like the real server
                await self._latency()
            if scenario == "error_500":
                return web.Response(status=500, text="Internal Server Error")
            if scenario == "error_422":
                return _detail("missing", ["body", "history"], "Field required", {"text": question})
            if scenario == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            steps = scenario_steps(scenario, question)
            return web.Response(
                text=self._dumps(self._body(steps)), content_type="application/json"
            )
        finally:
            await self._leave()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        await self._enter()
        try:
            begun = await self._begin(request)
            if isinstance(begun, web.Response):
                return begun
            question, scenario = begun
            if self.gate is not None:
                await self.gate.wait()
            await self._latency()
            if scenario == "error_500":
                return web.Response(status=500, text="Internal Server Error")
            if scenario == "error_422":
                return _detail("missing", ["body", "history"], "Field required", {"text": question})
            steps = scenario_steps(scenario, question)
            if self.shape == "chat_with_repo":
                snapshots = [str(self._body(steps[: i + 1])) for i in range(len(steps))]
                payload = "".join(snapshots).encode()
            else:
                payload = "".join(
                    self._dumps(self._body(steps[: i + 1])) for i in range(len(steps))
                ).encode()
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            rng = random.Random(f"{self.seed}:{question}:{self.counts[question]}")
            end = len(payload) // 2 if scenario == "drop" else len(payload)
            pos = 0
            while pos < end:
                size = rng.randint(1, self.max_chunk)
                await resp.write(payload[pos:min(pos + size, end)])
                pos += size
            if scenario == "drop":
                assert request.transport is not None
                request.transport.close()
                return resp
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
                   help="seconds per inference: one value, or LOW HIGH for a uniform range")
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
        port=args.port, latency=latency, shape=args.shape, seed=args.seed,
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
