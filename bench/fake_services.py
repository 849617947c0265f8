"""The fake LLM API and fake HuixiangDou servers in one process, for benchmarks.

    python -m bench.fake_services --llm-latency 0.5 2 --rpm-limit 600 --hxd 4 --hxd-latency 0.2 0.4

Prints one JSON line ``{"llm": base_url, "hxd": [url, ...]}`` once listening,
serves until SIGTERM/SIGINT, then prints one JSON line of counters (LLM status
counts, chat calls, HuixiangDou requests, the wall time of the first work
request each side received). Running the fakes in their own process keeps
their CPU out of the pipeline process's figures.

Questions: the fake's built-in sequence repeats its words after 3,660
questions (later ones are near duplicates by design), so for runs of up to
millions of questions this process answers question prompts with random
12-character questions from a 600-character alphabet: pairwise far below any
near-duplicate threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.huixiangdou_server import FakeHuixiangdou  # noqa: E402
from tests.fakes.llm_server import FakeLLM, format_questions  # noqa: E402

__all__ = ["unique_question", "main"]

KEY = "sk-bench-0123456789"
# Common CJK ideographs; any 600 of them will do.
_ALPHABET = [chr(c) for c in range(0x4E00, 0x4E00 + 20_000, 33)][:600]
_ASK = re.compile(r"提出\s*(\d+)\s*个|Write (\d+) different questions")


def unique_question(k: int) -> str:
    """Question number ``k`` of a sequence whose members share almost no 3-grams."""
    rng = random.Random(k)
    return "".join(rng.choices(_ALPHABET, k=12)) + "是什么？"


class _Counter:
    def __init__(self) -> None:
        self.next = 0
        self.first_llm: float | None = None
        self.first_hxd: float | None = None

    def llm(self, messages: list[dict[str, str]]) -> str:
        if self.first_llm is None:
            self.first_llm = time.time()
        user = str(messages[-1].get("content", ""))
        m = _ASK.search(user)
        if m is None:
            return "这是一个追问是什么？"
        n = int(m.group(1) or m.group(2))
        start, self.next = self.next, self.next + n
        return format_questions([unique_question(k) for k in range(start, start + n)], "python")

    def hxd(self, question: str) -> str:
        if self.first_hxd is None:
            self.first_hxd = time.time()
        return "answered"


def _latency(values: list[float]) -> float | tuple[float, float]:
    return values[0] if len(values) == 1 else (values[0], values[1])


async def _serve(args: argparse.Namespace) -> None:
    counter = _Counter()
    llm = FakeLLM(api_key=KEY, models=("bench-model",), latency=_latency(args.llm_latency),
                  rpm_limit=args.rpm_limit, responder=counter.llm, seed=args.seed)
    servers = [FakeHuixiangdou(latency=_latency(args.hxd_latency), seed=args.seed + i,
                               responder=counter.hxd) for i in range(args.hxd)]
    await llm.start()
    for s in servers:
        await s.start()
    print(json.dumps({"llm": llm.base_url, "hxd": [s.url for s in servers]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for s in servers:
            await s.stop()
        await llm.stop()
    report: dict[str, Any] = {
        "llm_calls": llm.calls,
        "llm_status": {str(k): v for k, v in llm.status_counts.items()},
        "hxd_requests": sum(s.requests for s in servers),
        "hxd_asked_twice": sum(1 for s in servers for n in s.counts.values() if n > 1),
        "hxd_peak_in_flight": max((s.peak_in_flight for s in servers), default=0),
        "first_llm": counter.first_llm,
        "first_hxd": counter.first_hxd,
    }
    print(json.dumps(report), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llm-latency", type=float, nargs="+", default=[0.0])
    p.add_argument("--rpm-limit", type=int, default=None)
    p.add_argument("--hxd", type=int, default=4)
    p.add_argument("--hxd-latency", type=float, nargs="+", default=[0.0])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
