"""Run state: what the ledgers say was done, and what a run still has to do.

Pure: it takes ledger rows (already read) and settings, and derives the plan a
resumed run follows. The QA graph, ``status`` and ``qa --dry-run`` all read it,
so they cannot disagree about where a run stands.

Ledgers under ``<out_dir>/state/``:

``questions.jsonl``  first-turn questions ``{"id", "aspect", "text", "seq"}`` and
                     follow-up questions ``{"id", "conv", "turn", "text"}``
``answers.jsonl``    one row per answer attempt of a turn (see ``pipeline.dataset``)
``events.jsonl``     run start/end, aspects given up, usage snapshots
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ConvPlan",
    "LEDGERS",
    "RunState",
    "derive_state",
    "ledger_paths",
    "target_turns",
]

LEDGERS = ("questions", "answers", "events")


def ledger_paths(state_dir: Path) -> dict[str, Path]:
    """The ledger files of one output folder."""
    return {name: state_dir / f"{name}.jsonl" for name in LEDGERS}


def target_turns(conv_id: str, min_turns: int, max_turns: int) -> int:
    """How many turns a conversation aims for: drawn from its id, so a resumed
    run aims for the same number the interrupted one did."""
    if max_turns <= min_turns:
        return min_turns
    draw = int.from_bytes(hashlib.blake2b(conv_id.encode(), digest_size=4).digest(), "big")
    return min_turns + draw % (max_turns - min_turns + 1)


@dataclass(slots=True)
class ConvPlan:
    """Where one conversation stands: the turns answered so far and the next."""

    conv: str
    aspect: str
    seq: int
    first_question: str
    target: int
    history: list[tuple[str, str]] = field(default_factory=list)
    next_turn: int = 1
    next_question: str | None = None  # a follow-up already written (and paid for)
    failed_attempts: int = 0  # failed attempts of the next turn so far


@dataclass(slots=True)
class RunState:
    """Everything a run needs to resume."""

    accepted: dict[str, list[str]]  # aspect -> accepted first-turn questions, in order
    exhausted: set[str]  # aspects given up after rounds with nothing new
    pending: list[ConvPlan]  # conversations with a turn still to ask, in seq order
    finished: int  # conversations that need nothing more
    gave_up: int  # conversations whose next turn failed max_answer_attempts times
    next_seq: int
    last_run: dict[str, Any] | None  # the last run_start/run_end pair, merged
    usage: dict[str, float]  # token and cost totals over all runs

    def total_questions(self) -> int:
        return sum(len(v) for v in self.accepted.values())


def _latest_per_turn(answer_rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, list[Mapping[str, Any]]]]:
    by_conv: dict[str, dict[int, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in answer_rows:
        by_conv[row["conv"]][int(row["turn"])].append(row)
    return by_conv


def _merge_runs(events: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, float]]:
    """The last run (start merged with its end, if any) and usage summed over runs.

    A run writes cumulative ``usage`` snapshots; the last snapshot of each run counts."""
    last: dict[str, Any] | None = None
    usage: dict[str, float] = defaultdict(float)
    run_usage: dict[str, float] = {}
    for ev in events:
        kind = ev.get("event")
        if kind == "run_start":
            for k, v in run_usage.items():
                usage[k] += v
            run_usage = {}
            last = dict(ev)
            last["status"] = "running or crashed"
        elif kind in ("usage", "run_end"):
            if isinstance(ev.get("usage"), dict):
                run_usage = {k: float(v) for k, v in ev["usage"].items() if isinstance(v, (int, float))}
            if kind == "run_end" and last is not None:
                # "time" stays the start; the end's own time becomes "ended".
                last.update({("ended" if k == "time" else k): v for k, v in ev.items() if k != "event"})
    for k, v in run_usage.items():
        usage[k] += v
    return last, dict(usage)


def derive_state(
    question_rows: Sequence[Mapping[str, Any]],
    answer_rows: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    *,
    aspects: Sequence[str],
    min_turns: int,
    max_turns: int,
    max_answer_attempts: int,
) -> RunState:
    """Derive the resume plan from the ledgers.

    A turn's latest row decides it: ``answered`` moves the conversation on;
    ``skipped``, ``vetoed`` and ``rejected`` end it (asking again would get the
    same verdict); ``failed`` is retried until ``max_answer_attempts`` failed rows.
    """
    accepted: dict[str, list[str]] = {a: [] for a in aspects}
    firsts: list[Mapping[str, Any]] = []
    followups: dict[tuple[str, int], str] = {}
    next_seq = 0
    for row in question_rows:
        if "conv" in row:
            followups[(row["conv"], int(row["turn"]))] = row["text"]
            continue
        firsts.append(row)
        accepted.setdefault(row["aspect"], []).append(row["text"])
        next_seq = max(next_seq, int(row["seq"]) + 1)

    exhausted = {ev["aspect"] for ev in events if ev.get("event") == "aspect_exhausted"}
    by_conv = _latest_per_turn(answer_rows)
    pending: list[ConvPlan] = []
    finished = gave_up = 0
    for row in sorted(firsts, key=lambda r: int(r["seq"])):
        conv = row["id"]
        plan = ConvPlan(
            conv=conv,
            aspect=row["aspect"],
            seq=int(row["seq"]),
            first_question=row["text"],
            target=target_turns(conv, min_turns, max_turns),
        )
        turns = by_conv.get(conv, {})
        done = False
        while plan.next_turn <= plan.target:
            rows = turns.get(plan.next_turn, [])
            question = row["text"] if plan.next_turn == 1 else followups.get((conv, plan.next_turn))
            latest = rows[-1] if rows else None
            if latest is None:
                plan.next_question = question
                break
            if latest["kind"] == "answered":
                plan.history.append((latest["question"], latest["answer"]))
                plan.next_turn += 1
                continue
            if latest["kind"] == "failed":
                failures = sum(1 for r in rows if r["kind"] == "failed")
                if failures < max_answer_attempts:
                    plan.next_question = latest["question"] or question
                    plan.failed_attempts = failures
                    break
                gave_up += 1
            done = True
            break
        else:
            done = True
        if done:
            finished += 1
        else:
            pending.append(plan)

    last_run, usage = _merge_runs(events)
    return RunState(
        accepted=accepted,
        exhausted=exhausted,
        pending=pending,
        finished=finished,
        gave_up=gave_up,
        next_seq=next_seq,
        last_run=last_run,
        usage=usage,
    )
