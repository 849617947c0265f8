"""Throughput against the services' physical limit.

The fakes (LLM: latency uniform ``--llm-latency``, server-side ``--rpm`` window;
``--servers`` HuixiangDou fakes answering one request at a time in
``--hxd-latency``) run in their own process, the pipeline in another with
client ``rpm`` = the server's limit. Figures: wall time against

    ideal = max(LLM calls / rpm minutes, RAG calls x mean RAG latency / servers)

(target <= 1.10) and the 429s the fake sent (target 0).

    python -m bench.bench_throughput [--questions 2000] [--aspects 20] [--rpm 600] [--batch-size 10]

``--batch-size 10`` leaves the run bound by the RAG servers; ``--batch-size 1
--llm-concurrency 32`` makes it bound by the RPM limit, which is where the
client's limiter meets the server's window.
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
    p.add_argument("--questions", type=int, default=2000)
    p.add_argument("--aspects", type=int, default=20)
    p.add_argument("--rpm", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--llm-concurrency", type=int, default=8)
    p.add_argument("--llm-latency", type=float, nargs=2, default=[0.5, 2.0])
    p.add_argument("--servers", type=int, default=4)
    p.add_argument("--hxd-latency", type=float, nargs=2, default=[0.2, 0.4])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        with services(llm_latency=tuple(args.llm_latency), rpm_limit=args.rpm, hxd=args.servers,
                      hxd_latency=tuple(args.hxd_latency)) as svc:
            settings = qa_settings(Path(tmp) / "out", svc, questions=args.questions,
                                   n_aspects=args.aspects, batch_size=args.batch_size,
                                   rpm=args.rpm, llm_concurrency=args.llm_concurrency)
            fig = run_qa_proc(settings)
        report = svc.report
    llm_calls = int(report["llm_calls"])
    rag_calls = int(report["hxd_requests"])
    mean_rag = sum(args.hxd_latency) / 2
    llm_ideal = llm_calls / args.rpm * 60
    rag_ideal = rag_calls * mean_rag / args.servers
    ideal = max(llm_ideal, rag_ideal)
    ratio = fig["wall"] / ideal
    got_429 = int(report["llm_status"].get("429", 0))
    print(f"throughput: N={args.questions:,} over {args.aspects} aspects, batch {args.batch_size}, "
          f"LLM {args.llm_latency[0]:g}-{args.llm_latency[1]:g} s at {args.rpm} RPM "
          f"(concurrency {args.llm_concurrency}), {args.servers} RAG servers "
          f"{args.hxd_latency[0]:g}-{args.hxd_latency[1]:g} s")
    print(f"  {fig['status']}: {fig['stats']['outcomes']}; LLM calls {llm_calls} "
          f"(ideal {llm_ideal:.1f} s), RAG calls {rag_calls} (ideal {rag_ideal:.1f} s)")
    print(f"  wall {fig['wall']:.1f} s / ideal {ideal:.1f} s = {ratio:.3f} (target <= 1.10); "
          f"429s received {got_429} (target 0); pipeline CPU {fig['cpu']:.1f} s "
          f"({fig['cpu'] / fig['wall']:.0%} of one core)")
    return {"ratio": ratio, "wall": fig["wall"], "ideal": ideal, "429": got_429,
            "llm_calls": llm_calls, "rag_calls": rag_calls}


if __name__ == "__main__":
    main()
