"""Peak RSS of a QA run at two sizes, and the growth per question between them.

Zero-latency fakes in their own process; each size runs the pipeline in a
fresh process (peak RSS = its ``ru_maxrss``, conversations.jsonl built at the
end included). Target: (RSS(large) - RSS(small)) / (large - small) <= 1 KB.

    python -m bench.bench_memory [--small 10000] [--large 100000] [--aspects 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import qa_settings, run_qa_proc, services  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=100_000)
    p.add_argument("--aspects", type=int, default=20)
    args = p.parse_args(argv)
    rss: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for n in (args.small, args.large):
            with services() as svc:
                settings = qa_settings(Path(tmp) / f"out{n}", svc, questions=n, n_aspects=args.aspects)
                fig = run_qa_proc(settings)
            answered = fig["stats"]["outcomes"].get("answered", 0)
            rss[n] = fig["maxrss"]
            print(f"memory: N={n:>9,}  peak RSS {fig['maxrss'] / 2**20:7.1f} MiB  "
                  f"({answered:,} answered, {fig['conversations']:,} conversations, wall {fig['wall']:.1f} s)")
    per_q = (rss[args.large] - rss[args.small]) / (args.large - args.small)
    print(f"  growth {per_q:.0f} B/question between N={args.small:,} and N={args.large:,} (target <= 1024 B)")
    return {"rss_small_mib": rss[args.small] / 2**20, "rss_large_mib": rss[args.large] / 2**20,
            "bytes_per_question": per_q}


if __name__ == "__main__":
    main()
