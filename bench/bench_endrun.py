"""The end of a QA run alone: rebuilding conversations.jsonl and writing the
run report from big ledgers, in a fresh process per repeat.

Ledgers of ``--questions`` conversations imitate a real run's mix: most turns
answered (some two turns deep, with follow-up question rows), some skipped,
rejected by the gate, vetoed, failed then retried, or failed for good. Figures:
seconds of ``write_conversations`` and of the report (``_write_report``), the
CPU seconds of both (steadier than wall time on a shared machine), and
the peak RSS the two add over what the process held before them, per question
(a QA run's end used to set its peak; the run's budget is 1 KB a question).

    python -m bench.bench_endrun [--questions 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fake_services import unique_question  # noqa: E402
from bench.harness import KEY_ENV, PYTHON, REPO, Services, aspects, qa_settings  # noqa: E402
from pipeline.jsonl import dumps_line  # noqa: E402
from pipeline.qa.questions import question_id  # noqa: E402
from pipeline.store.schema import answer_row, followup_row, question_row  # noqa: E402

_ANSWER = "关于这个问题：根据知识库记载，《黑神话：悟空》由游戏科学开发，于2024年8月20日发行。\n玩家扮演“天命人”。"


def _answer_row(qid: str, turn: int, question: str, kind: str, *, state: str = "success",
                reason: str = "", seconds: float = 0.3) -> dict[str, Any]:
    answered = kind == "answered"
    return answer_row(conv=qid, turn=turn, kind=kind, question=question, answer=_ANSWER if answered else "",
                      raw_answer=_ANSWER if kind in ("answered", "rejected") else "",
                      refs=["wukong.md"] if answered else [], state=state, reason=reason,
                      server="http://127.0.0.1:1", attempts=1, seconds=seconds)


def _rows_of(k: int, qid: str, text: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Follow-up question rows and answer rows of conversation ``k``."""
    mix = k % 10
    seconds = 0.1 + (k % 37) / 10
    if mix <= 4:
        answers = [_answer_row(qid, 1, text, "answered", seconds=seconds)]
        if mix == 0:  # two turns deep
            follow = f"{text} 那么后来呢？"
            return ([followup_row(id=question_id(follow), conv=qid, turn=2, text=follow)],
                    [*answers, _answer_row(qid, 2, follow, "answered", seconds=seconds)])
        return [], answers
    if mix == 5:
        return [], [_answer_row(qid, 1, text, "skipped", state=f"no_doc_{k % 3}", seconds=seconds)]
    if mix == 6:
        return [], [_answer_row(qid, 1, text, "rejected", reason="too_short", seconds=seconds)]
    if mix == 7:
        return [], [_answer_row(qid, 1, text, "failed", state="timeout", seconds=seconds),
                    _answer_row(qid, 1, text, "answered", seconds=seconds)]
    if mix == 8:
        return [], [_answer_row(qid, 1, text, "vetoed", state="secure_reject", seconds=seconds)]
    return [], [_answer_row(qid, 1, text, "failed", state="timeout", seconds=seconds)] * 3


def write_ledgers(state_dir: Path, questions: int, n_aspects: int) -> int:
    """The ledgers of a finished run of ``questions`` conversations; returns answer rows written."""
    state_dir.mkdir(parents=True, exist_ok=True)
    names = aspects(n_aspects)
    rows = 0
    with open(state_dir / "questions.jsonl", "wb") as qf, open(state_dir / "answers.jsonl", "wb") as af:
        for k in range(questions):
            text = unique_question(k)
            qid = question_id(text)
            qf.write(dumps_line(question_row(id=qid, aspect=names[k % n_aspects], text=text, seq=k)))
            follow_ups, answers = _rows_of(k, qid, text)
            qf.writelines(map(dumps_line, follow_ups))
            af.writelines(map(dumps_line, answers))
            rows += len(answers)
    (state_dir / "events.jsonl").write_bytes(orjson.dumps({"event": "run_start", "time": 0.0}) + b"\n")
    return rows


def settings_table(out_dir: Path, questions: int, n_aspects: int) -> dict[str, Any]:
    svc = Services("http://127.0.0.1:1", ["http://127.0.0.1:1"], None)  # type: ignore[arg-type]
    data = qa_settings(out_dir, svc, questions=questions, n_aspects=n_aspects)
    data["conversations"] = {"min_turns": 1, "max_turns": 2}
    return data


def _rss_now() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def child(cfg: Path) -> None:
    """Time the end of a run on the ledgers ``cfg`` names; print figures as JSON."""
    from pipeline.qa.stage import _write_report, write_conversations
    from pipeline.settings import parse_settings

    settings = parse_settings(json.loads(cfg.read_text(encoding="utf-8")), environ={KEY_ENV: "x"})
    run = {"status": "complete", "detail": "", "seconds": 10.0, "questions_new": 0,
           "stats": {"outcomes": {"answered": 1}}, "usage": {}, "llm_seconds": [0.5], "rag_seconds": [0.3]}
    before = _rss_now()
    cpu = time.process_time()
    with contextlib.ExitStack() as closing:
        t = time.perf_counter()
        if "ledgers" in inspect.signature(write_conversations).parameters:
            # As the run's end does: the ledgers opened once for both outputs.
            from pipeline.store.view import open_ledgers

            ledgers = closing.enter_context(open_ledgers(settings.state_dir))
            count = write_conversations(settings, ledgers)
            dataset_s = time.perf_counter() - t
            t = time.perf_counter()
            _write_report(settings, run, count, ledgers)  # type: ignore[call-arg]
        else:  # the code before the ledgers were shared
            count = write_conversations(settings)
            dataset_s = time.perf_counter() - t
            t = time.perf_counter()
            _write_report(settings, run, count)
        report_s = time.perf_counter() - t
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"dataset_s": dataset_s, "report_s": report_s, "cpu_s": cpu, "conversations": count,
                      "rss_before": before, "peak": peak}))


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=200_000)
    p.add_argument("--aspects", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3, help="fresh processes; the best time is kept")
    p.add_argument("--keep", type=Path, help="write the ledgers here and keep them (outputs to compare)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-endrun-") as tmp:
        out = args.keep or Path(tmp) / "out"
        t = time.perf_counter()
        rows = write_ledgers(out / "state", args.questions, args.aspects)
        size = (out / "state" / "answers.jsonl").stat().st_size
        print(f"end of run: ledgers of {args.questions:,} conversations, {rows:,} answer rows "
              f"({size / 1e6:.0f} MB) written in {time.perf_counter() - t:.1f} s")
        cfg = Path(tmp) / "settings.json"
        cfg.write_text(json.dumps(settings_table(out, args.questions, args.aspects), ensure_ascii=False),
                       encoding="utf-8")
        runs = []
        for _ in range(args.repeat):
            done = subprocess.run([PYTHON, "-m", "bench.bench_endrun", "--child", str(cfg)], cwd=REPO,
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["dataset_s"] + r["report_s"])
    grown = min(r["peak"] - r["rss_before"] for r in runs)
    total = best["dataset_s"] + best["report_s"]
    cpu = min(r["cpu_s"] for r in runs)
    print(f"  write_conversations {best['dataset_s']:.2f} s + report {best['report_s']:.2f} s = {total:.2f} s "
          f"({total / args.questions * 1e6:.1f} us/question, best of {args.repeat}); CPU {cpu:.2f} s "
          f"({cpu / args.questions * 1e6:.1f} us/question); {best['conversations']:,} conversations")
    print(f"  peak RSS {best['peak'] / 2**20:.1f} MiB, {grown / 2**20:.1f} MiB over the process before the end "
          f"({grown / args.questions:.0f} B/question)")
    return {"dataset_s": best["dataset_s"], "report_s": best["report_s"], "cpu_s": cpu,
            "peak_mib": best["peak"] / 2**20, "grown_bytes_per_question": grown / args.questions}


if __name__ == "__main__":
    main()
