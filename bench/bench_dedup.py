"""CPU time and memory of the near-duplicate index, in this process.

Three figures for ``Deduper`` fed the benchmark fakes' unique questions:
``add_many`` in batches of ``--batch`` (what a producer calls per LLM reply),
best of ``--repeat``; ``seed`` of ``--seed`` questions (what a resume runs in a
worker thread); and the memory ``tracemalloc`` sees per remembered question
after seeding ``--memory`` of them. Targets (issue 7): add_many <= 10 us per
question in batches of 10; memory per question no more than ~500 B.

    python -m bench.bench_dedup [--questions 20000] [--batch 10] [--seed 200000] [--memory 100000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fake_services import unique_question  # noqa: E402
from pipeline.qa.dedup import Deduper  # noqa: E402


def add_many_us(questions: list[str], batch: int) -> float:
    """Microseconds per question of ``add_many`` over ``questions`` in batches."""
    d = Deduper(0.7)
    batches = [questions[i : i + batch] for i in range(0, len(questions), batch)]
    gc.collect()
    t = time.process_time()
    for b in batches:
        d.add_many(b)
    return (time.process_time() - t) / len(questions) * 1e6


def seed_us(questions: list[str]) -> float:
    """Microseconds per question of ``seed`` over ``questions``."""
    d = Deduper(0.7)
    gc.collect()
    t = time.process_time()
    d.seed(questions)
    return (time.process_time() - t) / len(questions) * 1e6


def bytes_per_question(questions: list[str]) -> float:
    """Bytes ``tracemalloc`` sees held by a Deduper seeded with ``questions``."""
    gc.collect()
    tracemalloc.start()
    d = Deduper(0.7)
    d.seed(questions)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(d) == len(questions)
    return held / len(questions)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=200_000)
    p.add_argument("--memory", type=int, default=100_000)
    args = p.parse_args(argv)
    n = max(args.questions, args.seed, args.memory)
    questions = [unique_question(k) for k in range(n)]
    add = min(add_many_us(questions[: args.questions], args.batch) for _ in range(args.repeat))
    print(f"dedup: add_many {add:.1f} us/question ({args.questions:,} questions in batches of "
          f"{args.batch}, best of {args.repeat}; target <= 10)")
    seed = seed_us(questions[: args.seed])
    print(f"  seed {seed:.1f} us/question ({args.seed:,} questions, "
          f"{seed * 1e6 / 1e6:.1f} s per million)")
    mem = bytes_per_question(questions[: args.memory])
    print(f"  memory {mem:.0f} B/question after seeding {args.memory:,} (tracemalloc)")
    return {"add_many_us": add, "seed_us": seed, "bytes_per_question": mem}


if __name__ == "__main__":
    main()
