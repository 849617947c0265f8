"""The run report and ``status``: what the ledgers say, for a person.

Pure transforms (:func:`build_report`, :func:`render_markdown`,
:func:`build_status`, :func:`render_status`, :func:`last_run_outcome`,
:func:`percentile`) take rows already read; the I/O is small and separate:

``read_ledgers``   reads ``<out_dir>/state/*.jsonl`` *without* touching them:
                   a torn last line is skipped, never cut (``status`` and
                   ``qa --dry-run`` may run beside a live run, so they must not
                   write; ``pipeline.ledger``'s readers repair)
``lock_holder``    who holds the run lock, from the lock file's content and a
                   signal-0 probe of the pid; the lock itself is never taken
``write_report``   ``report.md`` and ``report.json``, each atomically

Scopes: counts, outcomes, states, lengths, tokens and cost cover every run
recorded in the ledgers (what the dataset is made of); the ``run`` section
(dropped questions, latencies, throughput) covers the run that just ended,
because that is what its live counters saw.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from pipeline.dataset import ANSWER_KINDS, latest_turns, summarise
from pipeline.errors import InputError
from pipeline.jsonl import atomic_writer
from pipeline.settings import Settings
from pipeline.state import RunState, derive_state, ledger_paths

__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "build_report",
    "build_status",
    "last_run_outcome",
    "lock_holder",
    "percentile",
    "read_ledgers",
    "read_rows",
    "render_markdown",
    "render_status",
    "resume_command",
    "state_from_rows",
    "write_report",
]

REPORT_MD = "report.md"
REPORT_JSON = "report.json"

# How many no-answer states and gate reasons the report lists, and how many
# example questions each: enough to see a pattern in the knowledge base.
TOP_STATES = 10
EXAMPLES = 3
_SNIPPET = 80


# --------------------------------------------------------------------------- reading (read-only)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of one ledger, read without modifying the file.

    A missing file is empty. An unterminated or unparsable *last* line is a
    write in progress (or a torn tail the next run cuts) and is skipped; a bad
    line anywhere else raises :class:`InputError` naming file and line."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines.pop()  # no final newline: an append still in flight
    rows: list[dict[str, Any]] = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            row = None
        if type(row) is not dict:
            if i == last:
                break
            raise InputError(f"{p}: line {i + 1} is not a JSON object; the ledger is damaged")
        rows.append(row)
    return rows


def read_ledgers(state_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every ledger of ``state_dir`` by name, read-only (see :func:`read_rows`)."""
    return {name: read_rows(path) for name, path in ledger_paths(state_dir).items()}


def state_from_rows(settings: Settings, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> RunState:
    """The resume plan of :func:`pipeline.state.derive_state` for these rows."""
    c = settings.conversations
    return derive_state(
        rows.get("questions", []),
        rows.get("answers", []),
        rows.get("events", []),
        aspects=settings.questions.aspects,
        min_turns=c.min_turns,
        max_turns=c.max_turns,
        max_answer_attempts=settings.run.max_answer_attempts,
    )


def lock_holder(out_dir: Path) -> dict[str, Any] | None:
    """The live holder of ``out_dir``'s run lock as ``{"pid", "host", "started"}``, or None.

    Read-only: the lock file's content is the holder's pid (emptied on a clean
    release), and the pid is probed with signal 0. A pid on another host cannot
    be probed and counts as live. (A pid reused by an unrelated process after a
    crash reads as live; rare, and ``status`` then says "running".)"""
    try:
        data = (out_dir / "state" / "run.lock").read_bytes()
        info = orjson.loads(data) if data.strip() else None
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    if info.get("host") and info["host"] != socket.gethostname():
        return info
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return info  # alive, owned by someone else
    return info


# --------------------------------------------------------------------------- pure helpers


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _latency(values: Sequence[float]) -> dict[str, Any]:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    return {
        "n": len(values),
        "p50_s": None if p50 is None else round(p50, 3),
        "p95_s": None if p95 is None else round(p95, 3),
    }


def _lengths(values: Sequence[int]) -> dict[str, Any]:
    return {
        "count": len(values),
        "min": min(values) if values else None,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "max": max(values) if values else None,
    }


def _snippet(text: str, limit: int = _SNIPPET) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _grouped(rows: Sequence[Mapping[str, Any]], key: str, top: int, examples: int) -> list[dict[str, Any]]:
    """Rows grouped by ``row[key]``, most common first, with example questions."""
    counts: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    seen: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        value = str(row.get(key) or "(none)")
        counts[value] += 1
        kinds[value][str(row.get("kind", ""))] += 1
        question = str(row.get("question", ""))
        if len(seen[value]) < examples and question and question not in seen[value]:
            seen[value].append(question)
    return [
        {"value": value, "count": n, "kind": kinds[value].most_common(1)[0][0], "examples": seen[value]}
        for value, n in counts.most_common(top)
    ]


def _dropped_all_runs(events: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for ev in events:
        if ev.get("event") == "run_end" and isinstance(ev.get("stats"), dict):
            for reason, n in (ev["stats"].get("dropped") or {}).items():
                if isinstance(n, int):
                    total[reason] += n
    return dict(total.most_common())


def _per_hour(count: float, seconds: float) -> float | None:
    return round(count * 3600 / seconds, 1) if seconds > 0 else None


def _usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "calls": int(usage.get("calls", 0)),
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "completion_tokens": int(usage.get("completion_tokens", 0)),
        "cost": round(float(usage.get("cost", 0.0)), 6),
    }


def _iso(ts: Any) -> str | None:
    if not isinstance(ts, (int, float)):
        return None
    return _dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the report


def build_report(
    settings: Settings,
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    state: RunState,
    run: Mapping[str, Any] | None = None,
    *,
    conversations: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The run report as plain data (what ``report.json`` holds).

    ``rows``: the ledgers by name; ``state``: derived from them; ``run``: the
    run that just ended: ``{"status", "detail", "seconds", "questions_new",
    "stats" (RunStats.snapshot()), "usage" (Usage.snapshot()), "llm_seconds",
    "rag_seconds"}``, or None for a report from the ledgers alone;
    ``conversations``: records written to the dataset, when known."""
    questions = [r for r in rows.get("questions", []) if "conv" not in r]
    answers = rows.get("answers", [])
    events = rows.get("events", [])
    latest = latest_turns(answers)
    turn_rows = [row for turns in latest.values() for row in turns.values()]

    per_aspect: dict[str, dict[str, Any]] = {}
    qs = settings.questions
    for aspect in dict.fromkeys([*qs.aspects, *state.accepted]):
        per_aspect[aspect] = {
            "questions": len(state.accepted.get(aspect, ())),
            "target": qs.per_aspect if aspect in qs.aspects else 0,
            "exhausted": aspect in state.exhausted,
            "first_turn": dict.fromkeys(ANSWER_KINDS, 0) | {"unasked": 0},
        }
    for q in questions:
        aspect = str(q.get("aspect", ""))
        if aspect not in per_aspect:
            continue
        first = latest.get(str(q.get("id")), {}).get(1)
        kind = str(first.get("kind")) if first is not None else "unasked"
        per_aspect[aspect]["first_turn"][kind] = per_aspect[aspect]["first_turn"].get(kind, 0) + 1

    no_answer = [r for r in turn_rows if r.get("kind") not in ("answered", "rejected")]
    rejected = [r for r in turn_rows if r.get("kind") == "rejected"]
    lengths = [len(str(r.get("answer", ""))) for r in turn_rows if r.get("kind") == "answered"]
    rag_all = [float(r["seconds"]) for r in answers
               if isinstance(r.get("seconds"), (int, float)) and r["seconds"] > 0]
    summary = summarise(answers)

    report: dict[str, Any] = {
        "generated": _iso(now if now is not None else _dt.datetime.now().timestamp()),
        "out_dir": str(settings.out_dir),
        "questions": {"accepted": state.total_questions(), "target": qs.per_aspect * len(qs.aspects)},
        "aspects": per_aspect,
        "conversations": {
            "finished": state.finished,
            "pending": len(state.pending),
            "gave_up": state.gave_up,
            "in_dataset": conversations,
        },
        "outcomes": {k: summary["by_kind"].get(k, 0) for k in ANSWER_KINDS},
        "answer_rows": summary["rows"],
        "no_answer_states": [
            {"state": g["value"], "kind": g["kind"], "count": g["count"], "examples": g["examples"]}
            for g in _grouped(no_answer, "state", TOP_STATES, EXAMPLES)
        ],
        "gate_rejections": [
            {"reason": g["value"], "count": g["count"], "examples": g["examples"]}
            for g in _grouped(rejected, "reason", TOP_STATES, EXAMPLES)
        ],
        "dropped_questions": _dropped_all_runs(events),
        "answer_chars": _lengths(lengths),
        "latency": {"rag_all_runs": _latency(rag_all)},
        "usage": _usage(state.usage),
        "run": None,
    }
    if run is not None:
        stats = run.get("stats") or {}
        seconds = float(run.get("seconds") or 0.0)
        outcomes = {k: int(v) for k, v in (stats.get("outcomes") or {}).items()}
        report["run"] = {
            "status": run.get("status"),
            "detail": run.get("detail") or "",
            "seconds": round(seconds, 1),
            "questions_new": int(run.get("questions_new", 0)),
            "outcomes": outcomes,
            "dropped": dict(Counter(stats.get("dropped") or {}).most_common()),
            "rejected": dict(Counter(stats.get("rejected") or {}).most_common()),
            "usage": _usage(run.get("usage") or {}),
            "latency": {
                "llm": _latency(list(run.get("llm_seconds") or ())),
                "rag": _latency(list(run.get("rag_seconds") or ())),
            },
            "questions_per_hour": _per_hour(int(run.get("questions_new", 0)), seconds),
            "answers_per_hour": _per_hour(sum(outcomes.values()), seconds),
        }
    return report


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the report of :func:`build_report` for a person."""
    lines: list[str] = ["# QA run report", ""]
    lines.append(f"Output folder `{report['out_dir']}`, written {report['generated']}.")
    lines.append("")
    run = report.get("run")
    if run is not None:
        lines += ["## This run", ""]
        lines.append(f"- ended: **{run['status']}**" + (f" ({_cell(run['detail'])})" if run["detail"] else ""))
        lines.append(f"- took {run['seconds']:.0f} s; {run['questions_new']} new questions, "
                     f"{sum(run['outcomes'].values())} answers")
        qph, aph = run["questions_per_hour"], run["answers_per_hour"]
        lines.append(f"- throughput: {'n/a' if qph is None else qph} questions/hour, "
                     f"{'n/a' if aph is None else aph} answers/hour")
        u = run["usage"]
        lines.append(f"- LLM: {u['calls']} calls, {u['prompt_tokens']} prompt + "
                     f"{u['completion_tokens']} completion tokens, cost {u['cost']:.4f}")
        lines.append("")
        lat = run["latency"]
        lines += _table(
            ["service", "calls", "p50", "p95"],
            [[name, lat[key]["n"], _fmt_s(lat[key]["p50_s"]), _fmt_s(lat[key]["p95_s"])]
             for name, key in (("LLM", "llm"), ("RAG", "rag"))],
        )
        lines.append("")
        if run["dropped"]:
            lines.append("Questions dropped this run (parser, screen, dedup): " + ", ".join(
                f"{k} {v}" for k, v in run["dropped"].items()))
            lines.append("")

    q = report["questions"]
    lines += ["## Questions per aspect (all runs)", "",
              f"{q['accepted']} of {q['target']} questions written.", ""]
    rows = []
    for aspect, a in report["aspects"].items():
        ft = a["first_turn"]
        rows.append([aspect, f"{a['questions']}/{a['target']}", ft.get("answered", 0),
                     sum(v for k, v in ft.items() if k not in ("answered", "unasked")),
                     ft.get("unasked", 0), "yes" if a["exhausted"] else ""])
    lines += _table(["aspect", "questions", "answered", "no answer", "not asked yet", "gave up"], rows)
    lines.append("")

    c = report["conversations"]
    lines += ["## Answers (all runs, latest attempt of each turn)", ""]
    lines.append(", ".join(f"{k} {v}" for k, v in report["outcomes"].items()))
    lines.append("")
    in_ds = "unknown" if c["in_dataset"] is None else c["in_dataset"]
    lines.append(f"Conversations: {c['finished']} finished, {c['pending']} still to ask, "
                 f"{c['gave_up']} given up after repeated failures; {in_ds} in the dataset.")
    lines.append("")

    lines += ["## Why questions got no answer", "",
              "The backend's last state for each unanswered turn, most common first. "
              "Skipped questions usually mean the knowledge base lacks the material: "
              "the examples show what to add.", ""]
    if report["no_answer_states"]:
        lines += _table(["state", "kind", "count", "example questions"],
                        [[s["state"], s["kind"], s["count"], " / ".join(s["examples"])]
                         for s in report["no_answer_states"]])
    else:
        lines.append("Every question asked got an answer.")
    lines.append("")

    lines += ["## Answers rejected by the gate", ""]
    if report["gate_rejections"]:
        lines += _table(["reason", "count", "example questions"],
                        [[g["reason"], g["count"], " / ".join(g["examples"])] for g in report["gate_rejections"]])
    else:
        lines.append("None.")
    lines.append("")

    lines += ["## Questions dropped (all finished runs)", ""]
    dropped = report["dropped_questions"]
    lines.append(", ".join(f"{k} {v}" for k, v in dropped.items()) if dropped else "None.")
    lines.append("")

    ac = report["answer_chars"]
    lines += ["## Answer length (characters, answered turns)", ""]
    if ac["count"]:
        lines += _table(["answers", "min", "p50", "p90", "max"],
                        [[ac["count"], ac["min"], ac["p50"], ac["p90"], ac["max"]]])
    else:
        lines.append("No answers yet.")
    lines.append("")

    u = report["usage"]
    rag = report["latency"]["rag_all_runs"]
    lines += ["## Tokens and cost (all runs)", "",
              f"{u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens; cost {u['cost']:.4f}.",
              "",
              f"RAG latency over all recorded attempts: p50 {_fmt_s(rag['p50_s'])}, "
              f"p95 {_fmt_s(rag['p95_s'])} ({rag['n']} attempts).", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` under ``out_dir``, each atomically."""
    md, js = out_dir / REPORT_MD, out_dir / REPORT_JSON
    with atomic_writer(js) as fh:
        fh.write(json.dumps(report, ensure_ascii=False, indent=2).encode() + b"\n")
    with atomic_writer(md) as fh:
        fh.write(render_markdown(report).encode())
    return md, js


# --------------------------------------------------------------------------- status


def last_run_outcome(last_run: Mapping[str, Any] | None, holder: Mapping[str, Any] | None) -> str:
    """How the last run ended: ``never run``, ``running``, ``crashed``, or the
    status its ``run_end`` recorded (complete, quota, interrupted, servers_down, fatal).

    A ``run_start`` without ``run_end`` is a live run when the lock has a live
    holder, else a crash (killed, power loss, or an error too early to record)."""
    if last_run is None:
        return "never run"
    status = str(last_run.get("status", ""))
    if status and status != "running or crashed":
        return status
    return "running" if holder is not None else "crashed"


def resume_command(settings: Settings) -> str:
    """The command that resumes this output folder's run."""
    if settings.source in ("<defaults>", "settings.toml"):
        return "python run.py qa"
    return f"python run.py --settings {settings.source} qa"


def build_status(
    settings: Settings,
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    state: RunState,
    holder: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What ``status`` shows, as plain data (pure; see :func:`render_status`)."""
    summary = summarise(rows.get("answers", []))
    qs = settings.questions
    last = state.last_run
    outcome = last_run_outcome(last, holder)
    turns_left = sum(p.target - p.next_turn + 1 for p in state.pending)
    questions_left = sum(
        max(0, qs.per_aspect - len(state.accepted.get(a, ())))
        for a in qs.aspects if a not in state.exhausted
    )
    done = outcome not in ("running",) and turns_left == 0 and questions_left == 0
    return {
        "out_dir": str(settings.out_dir),
        "last_run": {
            "outcome": outcome,
            "started": _iso(last.get("time")) if last else None,
            "pid": last.get("pid") if last else None,
            "seconds": last.get("seconds") if last else None,
            "detail": (last.get("detail") or "") if last else "",
            "holder_pid": holder.get("pid") if holder else None,
        },
        "aspects": {
            a: {"questions": len(state.accepted.get(a, ())), "target": qs.per_aspect,
                "exhausted": a in state.exhausted}
            for a in qs.aspects
        },
        "questions": {"accepted": state.total_questions(), "target": qs.per_aspect * len(qs.aspects),
                      "left": questions_left},
        "conversations": {"finished": state.finished, "pending": len(state.pending),
                          "turns_left": turns_left, "gave_up": state.gave_up},
        "by_kind": summary["by_kind"],
        "by_state": summary["by_state"],
        "rejections": summary["by_reason"],
        "dropped": _dropped_all_runs(rows.get("events", [])),
        "usage": _usage(state.usage),
        "resume": None if done else resume_command(settings),
    }


def _width(text: str) -> int:
    """Columns on a terminal: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _counts(d: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) if d else "none"


def render_status(status: Mapping[str, Any]) -> str:
    """The text ``python run.py status`` prints."""
    last = status["last_run"]
    lines = [f"output folder: {status['out_dir']}"]
    outcome = last["outcome"]
    if outcome == "never run":
        lines.append("last run: none recorded")
    else:
        text = f"last run: {outcome}"
        if outcome == "running":
            text += f" (pid {last['holder_pid']} holds the lock)"
        elif outcome == "crashed":
            text += " (started but never recorded its end, and no process holds the lock)"
        if last["started"]:
            text += f"; started {last['started']}"
        if last["seconds"] is not None:
            text += f", took {last['seconds']:.0f} s"
        lines.append(text)
        if last["detail"]:
            lines.append(f"  {last['detail']}")
    q = status["questions"]
    lines.append(f"questions: {q['accepted']}/{q['target']}")
    width = max((_width(a) for a in status["aspects"]), default=0)
    for aspect, a in status["aspects"].items():
        pad = " " * (width - _width(aspect))
        extra = "  (gave up: nothing new)" if a["exhausted"] else ""
        lines.append(f"  {aspect}{pad}  {a['questions']}/{a['target']}{extra}")
    c = status["conversations"]
    lines.append(f"conversations: {c['finished']} finished, {c['pending']} pending "
                 f"({c['turns_left']} turns left), {c['gave_up']} gave up after failures")
    lines.append(f"answers by kind: {_counts(status['by_kind'])}")
    lines.append("answers by HuixiangDou's last state:")
    if status["by_state"]:
        lines += [f"  {n:>6}  {state or '(none)'}" for state, n in status["by_state"].items()]
    else:
        lines.append("  none yet")
    lines.append(f"gate rejections: {_counts(status['rejections'])}")
    lines.append(f"questions dropped: {_counts(status['dropped'])}")
    u = status["usage"]
    lines.append(f"tokens: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion; "
                 f"cost {u['cost']:.4f}")
    if outcome == "running":
        lines.append("a run is in progress; check again later")
    elif outcome == "never run":
        lines.append(f"to start: {status['resume']}")
    elif status["resume"]:
        lines.append(f"to resume: {status['resume']}")
    else:
        lines.append("nothing left to do")
    return "\n".join(lines)
