"""How fast the ledgers load and append. Prints figures; asserts nothing.

    python bench/bench_ledger.py [--rows 1000000] [--write-rows 100000]

Loading is what a resume pays before its first request, so 1,000,000 answer
rows must load in well under 3 s. The rows imitate the answer ledger: an id,
a Chinese question and answer, refs and timings (about 400 bytes each).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.jsonl import dumps_line  # noqa: E402
from pipeline.store.ledger import LedgerWriter, read_ledger  # noqa: E402


def _question_row(i: int) -> dict[str, object]:
    qid = hashlib.blake2b(str(i).encode(), digest_size=8).hexdigest()
    return {"qid": qid, "aspect": "战斗系统", "question": f"黑神话悟空里第{i}种棍法怎么用？", "round": 1}


def _row(i: int) -> dict[str, object]:
    qid = hashlib.blake2b(str(i).encode(), digest_size=8).hexdigest()
    return {
        "qid": qid,
        "aspect": "战斗系统",
        "question": f"黑神话悟空里第{i}种棍法怎么用？",
        "kind": "answered",
        "answer": "劈棍、立棍和戳棍是天命人的三种棍势，各有不同的连招和破绽。" * 2,
        "refs": ["wiki/战斗系统.md"],
        "state": "success",
        "attempts": 1,
        "seconds": 3.25,
        "tokens": 812,
    }


def bench_read(folder: Path, rows: int) -> None:
    for kind, make in (("question", _question_row), ("answer", _row)):
        path = folder / f"{kind}s.jsonl"
        with open(path, "wb") as fh:
            fh.writelines(dumps_line(make(i)) for i in range(rows))
        size = path.stat().st_size
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            loaded = read_ledger(path)
            best = min(best, time.perf_counter() - start)
            assert len(loaded) == rows
            del loaded
        print(
            f"read_ledger: {rows:,} {kind} rows ({size / rows:.0f} B each, {size / 1e6:.0f} MB) "
            f"in {best:.2f} s ({rows / best / 1e6:.2f} M rows/s, best of 3)"
        )
        path.unlink()


async def _write(path: Path, rows: int, policy: str, concurrency: int) -> float:
    writer = LedgerWriter({"a": path}, policy)  # type: ignore[arg-type]
    run = asyncio.create_task(writer.run())
    per = rows // concurrency

    async def producer(k: int) -> None:
        for i in range(per):
            await writer.record("a", _row(k * per + i))

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for k in range(concurrency):
            tg.create_task(producer(k))
    elapsed = time.perf_counter() - start
    writer.close()
    await run
    return elapsed


def bench_write(folder: Path, rows: int) -> None:
    for policy in ("never", "batch", "line"):
        n = rows if policy != "line" else min(rows, 5_000)
        path = folder / f"w-{policy}.jsonl"
        elapsed = asyncio.run(_write(path, n, policy, concurrency=64))
        print(f"LedgerWriter fsync={policy}: {n:,} rows from 64 producers in {elapsed:.2f} s "
              f"({n / elapsed:,.0f} rows/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--write-rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        bench_read(Path(tmp), args.rows)
        bench_write(Path(tmp), args.write_rows)


if __name__ == "__main__":
    main()
