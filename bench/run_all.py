"""Run every benchmark and print their figures: quick sizes by default (about
a minute), the issue's sizes with ``--full`` (about fifteen minutes).

    python -m bench [--full]        (or: python bench/run_all.py [--full])
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import bench_memory, bench_overhead, bench_resume, bench_throughput  # noqa: E402

QUICK: list[tuple[str, list[str]]] = [
    ("throughput", ["--questions", "80", "--aspects", "8"]),
    ("overhead", ["--questions", "2000", "--repeat", "1"]),
    ("memory", ["--small", "2000", "--large", "20000"]),
    ("resume", ["--lines", "20000", "--pending", "200", "--kill-questions", "200", "--kill-after", "5"]),
    ("pretrain", ["--repeat", "1", "--large-mb", "16"]),
]
FULL: list[tuple[str, list[str]]] = [
    ("throughput", []),
    ("throughput", ["--batch-size", "1", "--llm-concurrency", "32"]),
    ("overhead", []),
    ("memory", []),
    ("resume", []),
    ("pretrain", ["--large-mb", "1024"]),
]
MODULES = {"throughput": bench_throughput, "overhead": bench_overhead,
           "memory": bench_memory, "resume": bench_resume}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the issue's sizes instead of quick ones")
    p.add_argument("--only", nargs="+", choices=[*MODULES, "pretrain"], help="run only these")
    args = p.parse_args()
    started = time.perf_counter()
    for name, argv in FULL if args.full else QUICK:
        if args.only and name not in args.only:
            continue
        print(f"\n== {name} {' '.join(argv)}", flush=True)
        if name == "pretrain":
            # An older script with its own argument parser and sys.argv use.
            subprocess.run([sys.executable, str(REPO / "bench" / "bench_pretrain.py"), *argv],
                           cwd=REPO, check=True)
        else:
            MODULES[name].main(argv)
        sys.stdout.flush()
    print(f"\nall benchmarks done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
