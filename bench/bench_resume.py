"""Resume: start-up time on big ledgers, and what a SIGKILL under load costs.

1. Ledgers of ``--lines`` first-turn questions (20 aspects, all accepted) with
   an answer row for all but ``--pending`` of them. Figures: ``load_state``
   (read + derive) in this process; the near-duplicate index seeded with every
   accepted question read back from the ledger (``earlier_questions`` and
   ``Deduper.seed``, which ``Graph.run`` runs in a worker
   thread, only when a producer needs it, while pending conversations are
   answered; producers wait for it); and, end to end, a fresh pipeline process from spawn to
   the first question a fake HuixiangDou server receives. Target <= 3 s.
2. A run of ``--kill-questions`` against fakes with latency (4 RAG servers
   0.2-0.4 s, LLM 0.5-2 s) is SIGKILLed after ``--kill-after`` seconds, then
   resumed against the same fakes. Figures: questions sent to HuixiangDou
   twice (target <= what was in flight: one per answer slot).

    python -m bench.bench_resume [--lines 1000000] [--pending 1000] [--kill-questions 400]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fake_services import unique_question  # noqa: E402
from bench.harness import KEY_ENV, aspects, qa_settings, run_qa_proc, services, start_qa_proc  # noqa: E402
from pipeline.qa.stage import earlier_questions, load_state  # noqa: E402
from pipeline.jsonl import dumps_line  # noqa: E402
from pipeline.qa.questions import question_id  # noqa: E402
from pipeline.store.schema import answer_row, question_row  # noqa: E402
from pipeline.qa.dedup import Deduper  # noqa: E402
from pipeline.settings import parse_settings  # noqa: E402


def write_ledgers(state_dir: Path, lines: int, pending: int, n_aspects: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    names = aspects(n_aspects)
    answer = "关于这个问题：根据知识库记载，《黑神话：悟空》由游戏科学开发，于2024年8月20日发行。"
    with open(state_dir / "questions.jsonl", "wb") as qf, open(state_dir / "answers.jsonl", "wb") as af:
        for k in range(lines):
            text = unique_question(k)
            qid = question_id(text)
            qf.write(dumps_line(question_row(id=qid, aspect=names[k % n_aspects], text=text, seq=k)))
            if k < lines - pending:
                af.write(dumps_line(answer_row(
                    conv=qid, turn=1, kind="answered", question=text, answer=answer, raw_answer=answer,
                    refs=["wukong.md"], state="success", reason="", server="http://127.0.0.1:1",
                    attempts=1, seconds=0.3)))


def startup(tmp: Path, lines: int, pending: int, n_aspects: int) -> dict[str, float]:
    out = tmp / "big"
    t = time.perf_counter()
    write_ledgers(out / "state", lines, pending, n_aspects)
    print(f"resume: ledgers of {lines:,} questions / {lines - pending:,} answers written "
          f"in {time.perf_counter() - t:.1f} s")
    figures: dict[str, float] = {}
    with services() as svc:
        data = qa_settings(out, svc, questions=lines, n_aspects=n_aspects)
        settings = parse_settings(data, environ={KEY_ENV: "x"})
        t = time.perf_counter()
        state = load_state(settings, repair=True)
        figures["load_state"] = time.perf_counter() - t
        t = time.perf_counter()
        dedup = Deduper(settings.questions.near_duplicate_threshold)
        for texts in earlier_questions(settings.state_dir / "questions.jsonl", state.questions_read):
            dedup.seed(texts)
        figures["dedup_seed"] = time.perf_counter() - t
        del state, dedup
        fig = run_qa_proc(data)
    first = svc.report.get("first_hxd")
    figures["first_request"] = (first - fig["spawned"]) if first else float("nan")
    print(f"  load_state {figures['load_state']:.2f} s; Deduper.seed of {lines:,} questions "
          f"{figures['dedup_seed']:.2f} s")
    print(f"  spawn -> first HuixiangDou request {figures['first_request']:.2f} s (target <= 3 s); "
          f"the run then answered {fig['stats']['outcomes']}")
    return figures


def kill_and_resume(tmp: Path, questions: int, kill_after: float) -> dict[str, float]:
    out = tmp / "kill"
    with services(llm_latency=(0.5, 2.0), hxd=4, hxd_latency=(0.2, 0.4)) as svc:
        data = qa_settings(out, svc, questions=questions, n_aspects=20)
        proc = start_qa_proc(data)
        time.sleep(kill_after)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        answered = sum(1 for _ in open(out / "state" / "answers.jsonl", "rb"))
        asked = sum(1 for _ in open(out / "state" / "questions.jsonl", "rb"))
        fig = run_qa_proc(data)
    slots = len(svc.hxd)
    twice = int(svc.report["hxd_asked_twice"])
    print(f"  SIGKILL after {kill_after:g} s: {asked} questions and {answered} answers in the ledgers; "
          f"resume {fig['status']} with {fig['stats']['outcomes']}")
    print(f"  questions sent to HuixiangDou twice: {twice} (target <= {slots} in flight)")
    return {"resent": twice, "in_flight_max": slots}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--pending", type=int, default=1000)
    p.add_argument("--aspects", type=int, default=20)
    p.add_argument("--kill-questions", type=int, default=400)
    p.add_argument("--kill-after", type=float, default=8.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        figures = startup(Path(tmp), args.lines, args.pending, args.aspects)
        figures.update(kill_and_resume(Path(tmp), args.kill_questions, args.kill_after))
    return figures


if __name__ == "__main__":
    main()
