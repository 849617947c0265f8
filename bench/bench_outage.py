"""An outage of the LLM behind HuixiangDou in the middle of a run: what survives it.

    python -m bench.bench_outage [--questions 30] [--scale 0.25] [--outage 20 20]

One in-process run of the QA stage against the fake LLM API and one fake
HuixiangDou server on 127.0.0.1. The server answers like the real one, time
scaled by ``--scale`` (answered 3-6 s, a rejection 0.4-1 s); from the first
``--outage`` second for the second's length (wall seconds, not scaled) the
LLM behind it is "down" and it answers every question with the outage
signature of ``--release`` (2024-09: ``query is not a question`` with an
empty ``relation``; 2024-10: an empty ``success``, vetoed) at once, as the
real server does. Prints how many questions were answered before,
during and after the outage, how many were written off, and how the run ended;
then runs ``qa`` again (as a user would) and prints what that adds.

The figures before the outage was recognised (README, Performance) came from
this script on 4fa2740, whose fake had no ``llm_down``: there a responder
returned the signature by name and every request took 3-6 s scaled.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from pipeline.qa.stage import run_qa  # noqa: E402
from pipeline.settings import parse_settings  # noqa: E402
from tests.fakes.huixiangdou_server import FakeHuixiangdou  # noqa: E402
from tests.fakes.llm_server import FakeLLM  # noqa: E402

KEY_ENV = "BENCH_LLM_KEY"
KEY = "sk-bench-outage-0123456789"
ASPECTS = ["战斗系统", "游戏世界观", "主要角色", "艺术与音乐", "文化内涵"]


class Outage:
    """Wall-clock window in which the LLM behind the fake server is down."""

    def __init__(self, start: float, length: float) -> None:
        self.t0 = time.monotonic()
        self.start, self.end = start, start + length
        self.served: list[tuple[float, str]] = []  # (seconds since t0, scenario)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def down(self) -> bool:
        return self.start <= self.now() < self.end


def _settings(tmp: Path, llm: FakeLLM, hxd: FakeHuixiangdou, questions: int) -> Any:
    per = -(-questions // len(ASPECTS))
    data = {
        "paths": {"data_dir": str(tmp / "data"), "out_dir": str(tmp / "out")},
        "llm": {"base_url": llm.base_url, "model": "fake-model", "api_key_env": KEY_ENV,
                "timeout_s": 10, "rpm": 100_000, "tpm": 100_000_000},
        "huixiangdou": {"urls": [hxd.url], "timeout_s": 60, "backoff_base_s": 1.0,
                        "rest_s": 10.0, "down_timeout_s": 120.0},
        "questions": {"aspects": ASPECTS, "per_aspect": per, "batch_size": per},
        "run": {"grace_s": 5, "progress_interval_s": 5},
    }
    return parse_settings(data, source="bench", environ={KEY_ENV: KEY})


def _answers(settings: Any) -> list[dict[str, Any]]:
    path = settings.state_dir / "answers.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def _run(args: argparse.Namespace) -> None:
    outage = Outage(args.outage[0], args.outage[1])
    scale = args.scale
    hxd = FakeHuixiangdou(seed=1)
    _install_outage(hxd, outage, scale, args.release)
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeLLM(api_key=KEY, models=("fake-model",)) as llm, hxd:
            settings = _settings(Path(tmp), llm, hxd, args.questions)
            first = await run_qa(settings, install_signals=False)
            ran = outage.now()
            rows = _answers(settings)
            print(f"run 1: {first.line().splitlines()[0]}  ({ran:.1f} s wall)")
            if first.detail:
                print(f"  detail: {first.detail[:300]}")
            phases = {"before": 0, "during": 0, "after": 0}
            for t, scenario in outage.served:
                if scenario == "answered":
                    phase = "before" if t < outage.start else "during" if t < outage.end else "after"
                    phases[phase] += 1
            print(f"  answers served by the server: before the outage {phases['before']}, "
                  f"during {phases['during']}, after {phases['after']}")
            kinds: dict[str, int] = {}
            for r in rows:
                kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
            print(f"  answer rows by kind: {kinds}")
            # A user runs qa again once it is over (the outage is long past now).
            outage.start = outage.end = -1.0
            served_before = len(outage.served)
            second = await run_qa(settings, install_signals=False)
            again = sum(1 for _, s in outage.served[served_before:] if s == "answered")
            print(f"run 2: {second.line().splitlines()[0]}; questions answered by the rerun: {again}")
            answered = {(r["conv"], r["turn"]) for r in _answers(settings) if r["kind"] == "answered"}
            print(f"total: {len(answered)} of {args.questions} questions answered")


def _install_outage(hxd: FakeHuixiangdou, outage: Outage, scale: float, release: str) -> None:
    """Answered questions take 3-6 s, rejections 0.4-1 s (scaled); during the
    outage every question gets ``release``'s signature, at once."""
    signature = f"outage_{release.replace('-', '_')}"
    hxd.time_scale = scale

    def responder(q: str) -> str:
        hxd.llm_down = release if outage.down() else None
        outage.served.append((outage.now(), signature if outage.down() else "answered"))
        return "answered"

    hxd.responder = responder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=30)
    p.add_argument("--scale", type=float, default=0.25, help="times of the real server (answered 3-6 s)")
    p.add_argument("--outage", type=float, nargs=2, default=[8.0, 20.0], metavar=("START", "SECONDS"))
    p.add_argument("--release", choices=["2024-09", "2024-10"], default="2024-09",
                    help="whose outage signature the server shows")
    p.add_argument("-v", action="store_true", help="log the pipeline's warnings")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.v else logging.ERROR,
                        format="%(relativeCreated)8.0f ms %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault(KEY_ENV, KEY)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
