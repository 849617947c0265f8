"""``status``: where an output folder's QA stage stands, from its ledgers
alone (read-only, beside a live run too), for a person.

:func:`build_status` gathers it as plain data and :func:`render_status`
prints it; :func:`lock_holder` says who holds the run lock without taking it.
"""

from __future__ import annotations

import os
import socket
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.outputs.answer_stats import answer_stats
from pipeline.outputs.report import (
    all_runs,
    as_ledgers,
    drop_reasons,
    gave_up_label,
    iso_time,
    short_advice,
    short_aspects,
    short_summary,
    usage_totals,
)
from pipeline.settings import Settings
from pipeline.store.ledger import parse_lock_info
from pipeline.store.resume import RunState
from pipeline.store.view import Ledgers

__all__ = ["build_status", "last_run_outcome", "lock_holder", "render_status", "resume_command"]


def lock_holder(out_dir: Path) -> dict[str, Any] | None:
    """The live holder of ``out_dir``'s run lock as ``{"pid", "host", "started"}``, or None.

    Read-only: the lock file's content is the holder's pid (emptied on a clean
    release), and the pid is probed with signal 0. A pid on another host cannot
    be probed and counts as live. (A pid reused by an unrelated process after a
    crash reads as live; rare, and ``status`` then says "running".)"""
    try:
        info = parse_lock_info((out_dir / "state" / "run.lock").read_bytes())
    except OSError:
        return None
    if not isinstance(info.get("pid"), int):
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


def _usage_as_of(events: Sequence[Mapping[str, Any]]) -> str | None:
    """The time of the last ``usage`` row after the last ``run_start``, or None."""
    for ev in reversed(events):
        if ev.get("event") == "usage":
            return iso_time(ev.get("time"))
        if ev.get("event") == "run_start":
            return None
    return None


def _build_after_last_run(events: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The last ``build`` event after the last ``run_start``, or None."""
    for ev in reversed(events):
        kind = ev.get("event")
        if kind == "build":
            return {"time": ev.get("time"), "conversations": ev.get("conversations")}
        if kind == "run_start":
            return None
    return None


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
    return settings.command("qa")


def build_status(
    settings: Settings,
    ledgers: Ledgers | Mapping[str, Iterable[Mapping[str, Any]]],
    state: RunState,
    holder: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What ``status`` shows, as plain data (see :func:`render_status`);
    ``ledgers`` as for :func:`pipeline.outputs.report.build_report`."""
    ledgers = as_ledgers(ledgers)
    summary = answer_stats(ledgers.answers, top=0, examples=0)
    qs = settings.questions
    last = state.last_run
    outcome = last_run_outcome(last, holder)
    turns_left = sum(p.target - p.next_turn + 1 for p in state.pending)
    questions_left = sum(
        max(0, qs.per_aspect - state.accepted.get(a, 0))
        for a in qs.aspects if a not in state.exhausted
    )
    selection = next((ev for ev in reversed(ledgers.events) if ev.get("event") == "passages"), None)
    selected = int(selection.get("selected", 0)) if selection is not None else 0
    passages_left = max(0, selected - len(state.passages_asked)) if qs.source != "aspects" else 0
    done = outcome not in ("running",) and turns_left == 0 and questions_left == 0 and passages_left == 0
    build = _build_after_last_run(ledgers.events)
    short = short_aspects(settings, state)
    return {
        "out_dir": str(settings.out_dir),
        "last_run": {
            "outcome": outcome,
            "started": iso_time(last.get("time")) if last else None,
            "pid": last.get("pid") if last else None,
            "seconds": last.get("seconds") if last else None,
            "detail": (last.get("detail") or "") if last else "",
            "holder_pid": holder.get("pid") if holder else None,
        },
        "aspects": {
            a: {"questions": state.accepted.get(a, 0), "target": qs.per_aspect,
                "exhausted": a in state.exhausted, "gave_up": short.get(a)}
            for a in qs.aspects
        },
        "short": short,
        "command": resume_command(settings),
        "questions": {"accepted": sum(state.accepted.values()), "target": qs.per_aspect * len(qs.aspects),
                      "left": questions_left, "corpus": state.corpus_questions},
        "passages": {"selected": selected, "asked": len(state.passages_asked), "left": passages_left},
        "conversations": {"finished": state.finished, "pending": len(state.pending),
                          "turns_left": turns_left, "gave_up": state.gave_up, "short": state.short,
                          "set_aside": dict(state.set_aside)},
        # The last `build` since the last run started, if any: {"time", "conversations"}.
        "build": build,
        # A run that never recorded its end may have died writing the dataset.
        "rebuild": settings.command("build") if outcome == "crashed" and build is None else None,
        "by_kind": summary.by_kind,
        "by_backend": summary.by_backend,
        "by_state": summary.by_state,
        "rejections": summary.by_reason,
        "dropped": all_runs(ledgers.events, "dropped"),
        "usage": usage_totals(state.usage),
        # When the running run last recorded its usage (a row every few seconds while it changes).
        "usage_as_of": _usage_as_of(ledgers.events) if outcome == "running" else None,
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
    p = status["passages"]
    if p["selected"] or q["corpus"]:
        lines.append(f"corpus questions: {q['corpus']}, from {p['asked']} of {p['selected']} passages asked")
    width = max((_width(a) for a in status["aspects"]), default=0)
    for aspect, a in status["aspects"].items():
        pad = " " * (width - _width(aspect))
        extra = f"  (gave up: {gave_up_label(a)})" if a.get("gave_up") else ""
        lines.append(f"  {aspect}{pad}  {a['questions']}/{a['target']}{extra}")
    c = status["conversations"]
    lines.append(f"conversations: {c['finished']} finished, {c['pending']} pending "
                 f"({c['turns_left']} turns left), {c['gave_up']} gave up after failures, "
                 f"{c.get('short', 0)} short of their target turns")
    if c.get("set_aside"):
        lines.append("left out by the current settings (kept in the ledgers): "
                     + ", ".join(f"{why} {n}" for why, n in c["set_aside"].items()))
    build = status.get("build")
    if build:
        lines.append(f"conversations.jsonl rebuilt by `build` {iso_time(build.get('time'))}: "
                     f"{build.get('conversations')} conversations")
    lines.append(f"answers by kind: {_counts(status['by_kind'])}")
    for backend, counts in status.get("by_backend", {}).items():
        lines.append(f"  by {backend}: {_counts(counts)}")
    lines.append("answers by the backend's last state:")
    if status["by_state"]:
        lines += [f"  {n:>6}  {state or '(none)'}" for state, n in status["by_state"].items()]
    else:
        lines.append("  none yet")
    lines.append(f"gate rejections: {_counts(status['rejections'])}")
    lines.append(f"questions dropped: {drop_reasons(status['dropped'])}")
    u = status["usage"]
    so_far = ""
    if outcome == "running":
        as_of = status.get("usage_as_of")
        so_far = f" so far (the running run's as of {as_of})" if as_of else " so far (none recorded by the running run yet)"
    lines.append(f"tokens{so_far}: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion; "
                 f"cost {u['cost']:.4f}")
    if outcome == "running":
        lines.append("a run is in progress; check again later")
    elif outcome == "never run":
        lines.append(f"to start: {status['resume']}")
    elif status["resume"]:
        lines.append(f"to resume: {status['resume']}")
    elif status.get("rebuild"):
        lines.append(f"conversations.jsonl may predate the last answers (the run ended without "
                     f"recording it was written); to rebuild it: {status['rebuild']}")
    elif status.get("short"):
        lines.append(f"{short_summary(status['short'])}: {short_advice(status['short'], status['command'])}")
    else:
        lines.append("nothing left to do")
    if status.get("rebuild") and status["resume"]:
        lines.append(f"or, without resuming, rebuild conversations.jsonl from what is recorded: {status['rebuild']}")
    return "\n".join(lines)
