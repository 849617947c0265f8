"""Overhead of the pipeline process against a bare loop making the same calls.

Zero-latency fakes in their own process; the pipeline (``run_qa``) and then the
bare loop (``bench.qa_proc --mode bare``: ``LLMClient.chat`` per question
batch, ``HuixiangdouPool.ask`` per question, nothing else) each in a fresh
process on the same settings. Figures: CPU seconds (user+sys) of the run per
question, and their ratio (target <= 1.3). Best of ``--repeat`` each.

    python -m bench.bench_overhead [--questions 20000] [--aspects 20] [--fsync batch|never] [--profile OUT.txt]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import qa_settings, run_qa_proc, services  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=20_000)
    p.add_argument("--aspects", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--fsync", choices=("line", "batch", "never"), default="batch",
                   help="the pipeline's ledger fsync policy (run.fsync); 'never' shows what syncing costs")
    p.add_argument("--profile", type=Path, help="also profile a pipeline and a bare run (pyinstrument text, OUT.pipeline.txt / OUT.bare.txt)")
    args = p.parse_args(argv)
    n = args.questions
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for _ in range(args.repeat):
            for mode in ("pipeline", "bare"):
                with services() as svc:
                    out = Path(tmp) / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    settings = qa_settings(out, svc, questions=n, n_aspects=args.aspects,
                                           batch_size=args.batch_size)
                    settings["run"]["fsync"] = args.fsync
                    fig = run_qa_proc(settings, mode)
                if mode == "pipeline":
                    answered = fig["stats"]["outcomes"].get("answered", 0)
                    if answered != n:
                        print(f"  warning: pipeline answered {answered} of {n}")
                if mode not in best or fig["cpu"] < best[mode]["cpu"]:
                    best[mode] = fig
        if args.profile is not None:
            for mode in ("pipeline", "bare"):
                with services() as svc:
                    out = Path(tmp) / f"prof-{mode}"
                    settings = qa_settings(out, svc, questions=n, n_aspects=args.aspects,
                                           batch_size=args.batch_size)
                    settings["run"]["fsync"] = args.fsync
                    where = args.profile.with_suffix(f".{mode}{args.profile.suffix}")
                    run_qa_proc(settings, mode, profile=where)
                print(f"  {mode} profile written to {where}")
    pipe, bare = best["pipeline"], best["bare"]
    ratio = pipe["cpu"] / bare["cpu"]
    print(f"overhead: N={n:,} questions, {args.aspects} aspects, zero-latency fakes, "
          f"fsync {args.fsync}, best of {args.repeat}")
    for name, fig in (("pipeline", pipe), ("bare", bare)):
        print(f"  {name:8s} CPU {fig['cpu']:6.2f} s (user {fig['cpu_user']:.2f} + sys {fig['cpu_sys']:.2f}) "
              f"= {fig['cpu'] / n * 1e3:.3f} ms/question; wall {fig['wall']:.1f} s")
    print(f"  ratio pipeline/bare CPU {ratio:.2f} (target <= 1.3)")
    return {"pipeline_ms_per_q": pipe["cpu"] / n * 1e3, "bare_ms_per_q": bare["cpu"] / n * 1e3,
            "ratio": ratio}


if __name__ == "__main__":
    main()
