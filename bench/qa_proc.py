"""One QA run in its own process, for benchmarks: the pipeline (``run_qa``) or
the bare loop. Prints one JSON line of figures: CPU seconds (user+sys) of the
run itself, wall seconds, peak RSS, and the run's result.

    python -m bench.qa_proc SETTINGS.json [--mode pipeline|bare] [--profile OUT.txt]

The bare loop makes the same HTTP calls with the same clients and nothing
else: per aspect, ``ceil(per_aspect / batch_size)`` calls of
``LLMClient.chat`` on the question prompt, each batch's questions handed over
a bounded queue to one worker per HuixiangDou slot calling
``HuixiangdouPool.ask``. No parsing, screening, dedup, gate or ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.services.huixiangdou import HuixiangdouPool  # noqa: E402
from pipeline.services.llm import LLMClient  # noqa: E402
from pipeline.qa.stage import run_qa  # noqa: E402
from pipeline.qa.questions import question_messages  # noqa: E402
from pipeline.settings import Settings, parse_settings  # noqa: E402

__all__ = ["bare_loop", "main"]


async def bare_loop(settings: Settings) -> dict[str, Any]:
    """The same calls as the pipeline, with nothing around them."""
    qs = settings.questions
    hx = settings.huixiangdou
    queue: asyncio.Queue[str | None] = asyncio.Queue(settings.run.queue_size)
    workers = len(hx.urls) * hx.concurrency_per_server
    async with LLMClient(settings.llm) as llm:
        pool = HuixiangdouPool(hx)
        try:
            async def produce(aspect: str) -> None:
                # Same prompts as the pipeline's, sample of earlier questions included.
                asked: list[str] = []
                for _ in range(math.ceil(qs.per_aspect / qs.batch_size)):
                    n = min(qs.batch_size, qs.per_aspect - len(asked))
                    await llm.chat(question_messages(qs, aspect, n, asked[-20:]))
                    for k in range(n):
                        asked.append(f"{aspect}的第{len(asked)}个问题是什么？")
                        await queue.put(asked[-1])

            async def answer() -> None:
                while (q := await queue.get()) is not None:
                    await pool.ask(q)

            async with asyncio.TaskGroup() as tg:
                for _ in range(workers):
                    tg.create_task(answer())
                async with asyncio.TaskGroup() as producers:
                    for aspect in qs.aspects:
                        producers.create_task(produce(aspect))
                for _ in range(workers):
                    await queue.put(None)
        finally:
            await pool.aclose()
        return {"status": "complete", "usage": llm.usage.snapshot()}


async def pipeline(settings: Settings) -> dict[str, Any]:
    result = await run_qa(settings, install_signals=False)
    return {"status": result.status, "stats": result.stats, "usage": result.usage,
            "conversations": result.conversations}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("settings", type=Path)
    p.add_argument("--mode", choices=["pipeline", "bare"], default="pipeline")
    p.add_argument("--profile", type=Path, help="write a pyinstrument profile of the run here")
    args = p.parse_args()
    data = json.loads(args.settings.read_text(encoding="utf-8"))
    settings = parse_settings(data, source=str(args.settings), environ=os.environ)
    coro_fn = pipeline if args.mode == "pipeline" else bare_loop

    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run

    profiler = None
    if args.profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    result = runner(coro_fn(settings))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    if profiler is not None:
        profiler.stop()
        args.profile.write_text(profiler.output_text(unicode=True, color=False, show_all=False),
                                encoding="utf-8")
    result.update({
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "cpu_user": after.ru_utime - before.ru_utime,
        "cpu_sys": after.ru_stime - before.ru_stime,
        # ru_maxrss: kilobytes on Linux, bytes on macOS.
        "maxrss": after.ru_maxrss * (1 if sys.platform == "darwin" else 1024),
    })
    print(json.dumps(result, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
