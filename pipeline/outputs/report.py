"""The run report: what the ledgers say of a run and of the output folder,
for a person.

:func:`build_report` and :func:`render_markdown` are transforms of ledgers
already opened (:mod:`pipeline.store.view`: read-only, the answer ledger an
index, not its rows); :func:`write_report` writes ``report.md`` and
``report.json``, each atomically.

Scopes: counts, outcomes, states, lengths, tokens and cost cover every run
recorded in the ledgers (what the dataset is made of); the ``run`` section
(dropped questions, latencies, throughput) covers the run that just ended,
because that is what its live counters saw.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pipeline.jsonl import atomic_writer
from pipeline.outputs.answer_stats import answer_stats
from pipeline.outputs.coverage import SourceTally, off_passage_answers, render_coverage
from pipeline.outputs.identity import identity_report, identity_section
from pipeline.services.replies import ADVICE
from pipeline.settings import Settings
from pipeline.store.resume import RunState
from pipeline.store.schema import ANSWER_KINDS, is_followup
from pipeline.store.view import Ledgers

__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "as_ledgers",
    "build_report",
    "drop_reasons",
    "gave_up_label",
    "short_advice",
    "short_aspects",
    "short_summary",
    "all_runs",
    "iso_time",
    "percentile",
    "render_markdown",
    "usage_totals",
    "write_report",
]

REPORT_MD = "report.md"
REPORT_JSON = "report.json"

# How many no-answer states and gate reasons the report lists, and how many
# example questions each: enough to see a pattern in the knowledge base.
TOP_STATES = 10
EXAMPLES = 3


def as_ledgers(ledgers: Ledgers | Mapping[str, Iterable[Mapping[str, Any]]]) -> Ledgers:
    """``ledgers`` as :class:`~pipeline.store.view.Ledgers` (rows already read, by name, are wrapped)."""
    return ledgers if isinstance(ledgers, Ledgers) else Ledgers.of_rows(ledgers)


# --------------------------------------------------------------------------- pure helpers


def percentile(ordered: Sequence[Any], q: float) -> Any:
    """The ``q``-th percentile (0-100) by nearest rank of values already
    sorted (one sort serves every percentile); None for no values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _latency(values: Iterable[float]) -> dict[str, Any]:
    ordered = sorted(values)
    p50, p95 = percentile(ordered, 50), percentile(ordered, 95)
    return {
        "n": len(ordered),
        "p50_s": None if p50 is None else round(p50, 3),
        "p95_s": None if p95 is None else round(p95, 3),
    }


def _lengths(values: Iterable[int]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "min": ordered[0] if ordered else None,
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "max": ordered[-1] if ordered else None,
    }


# What each dropped-question reason means, for a person (report.md, status).
DROP_REASONS: Final[Mapping[str, str]] = {
    "too_long": "too long",
    "too_short": "too short",
    "wrong_language": "not in [questions] language",
    "not_a_question": "not a question",
    "template_marker": "chat-template marker",
    "empty": "empty",
    "duplicate": "duplicate",
    "near_duplicate": "near duplicate",
    "over_target": "over per_aspect",
}


def drop_reasons(d: Mapping[str, int]) -> str:
    return ", ".join(f"{DROP_REASONS.get(k, k)} {v}" for k, v in d.items()) if d else "none"


def short_summary(short: Mapping[str, str]) -> str:
    """``qa finished: 3 aspects short (2 unusable replies, 1 saturated)``, for
    ``short``: aspect -> why it was given up ("saturated" or "unusable")."""
    unusable = sum(1 for why in short.values() if why != "saturated")
    saturated = len(short) - unusable
    reasons = [f"{unusable} unusable replies"] if unusable else []
    reasons += [f"{saturated} saturated"] if saturated else []
    return f"qa finished: {len(short)} aspect{'s' * (len(short) != 1)} short ({', '.join(reasons)})"


def short_advice(short: Mapping[str, str], resume: str = "python run.py qa") -> str:
    """What to do about the aspects of :func:`short_summary`."""
    advice = []
    if any(why != "saturated" for why in short.values()):
        advice.append(f"aspects lost to unusable replies (empty, refused, unparseable, screened out: "
                      f"see report.md) are asked again by the next `{resume}`")
    if any(why == "saturated" for why in short.values()):
        advice.append("a saturated aspect (the model had nothing new) reopens when [questions] "
                      f"per_aspect or max_stale_rounds is raised, or with `{resume} --retry-short`")
    return "; ".join(advice)


def short_aspects(settings: Settings, state: RunState) -> dict[str, str]:
    """Aspects short of per_aspect that were given up, and why."""
    qs = settings.questions
    return {a: state.given_up[a] for a in qs.aspects
            if a in state.given_up and state.accepted.get(a, 0) < qs.per_aspect}


def _unusable_replies(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """LLM replies that carried nothing usable (all runs), by kind and by what
    they were for, with the provider's words for refusals and what to do."""
    by_kind: Counter[str] = Counter()
    by_purpose: dict[str, Counter[str]] = {}
    refused: list[dict[str, str]] = []
    for ev in events:
        if ev.get("event") != "llm_unusable":
            continue
        kind, purpose = str(ev.get("kind", "")), str(ev.get("purpose", ""))
        by_kind[kind] += 1
        by_purpose.setdefault(purpose, Counter())[kind] += 1
        if kind == "refused" and len(refused) < EXAMPLES:
            where = ev.get("aspect") or ev.get("conv") or ev.get("passage") or ""
            example = {"purpose": purpose, "where": str(where), "provider": str(ev.get("detail", ""))}
            if example not in refused:
                refused.append(example)
    return {
        "by_kind": dict(by_kind.most_common()),
        "by_purpose": {p: dict(c.most_common()) for p, c in by_purpose.items()},
        "refused_examples": refused,
        "advice": {k: ADVICE.get(k, _ROUND_ADVICE.get(k, "")) for k in by_kind},
    }


_ROUND_ADVICE: Final[Mapping[str, str]] = {
    "unparseable": "the reply held no question: check [questions] prompts and the model",
    "screened_out": "every question failed the screen (see the dropped reasons): check [questions] "
                    "language and the length limits",
    "failed": "the call failed after its retries: check the provider's status",
}


def all_runs(events: Sequence[Mapping[str, Any]], counter: str) -> dict[str, int]:
    """One of the run statistics' counters (e.g. "dropped"), summed over every finished run."""
    total: Counter[str] = Counter()
    for ev in events:
        if ev.get("event") == "run_end" and isinstance(ev.get("stats"), dict):
            for reason, n in (ev["stats"].get(counter) or {}).items():
                if isinstance(n, int):
                    total[reason] += n
    return dict(total.most_common())


def _per_hour(count: float, seconds: float) -> float | None:
    return round(count * 3600 / seconds, 1) if seconds > 0 else None


def usage_totals(usage: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "calls": int(usage.get("calls", 0)),
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "completion_tokens": int(usage.get("completion_tokens", 0)),
        "cost": round(float(usage.get("cost", 0.0)), 6),
    }


def iso_time(ts: Any) -> str | None:
    if not isinstance(ts, (int, float)):
        return None
    return _dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the report


def build_report(
    settings: Settings,
    ledgers: Ledgers | Mapping[str, Iterable[Mapping[str, Any]]],
    state: RunState,
    run: Mapping[str, Any] | None = None,
    *,
    conversations: int | None = None,
    now: float | None = None,
    left_out: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The run report as plain data (what ``report.json`` holds).

    ``ledgers``: :func:`pipeline.store.view.open_ledgers`, or rows already
    read, by ledger name;
    ``state``: derived from them; ``run``: the run that just ended:
    ``{"status", "detail", "seconds", "questions_new", "stats"
    (RunStats.snapshot()), "usage" (Usage.snapshot()), "llm_seconds",
    "rag_seconds"}``, or None for a report from the ledgers alone;
    ``conversations``: records written to the dataset, when known."""
    ledgers = as_ledgers(ledgers)
    answers = ledgers.answers

    per_aspect: dict[str, dict[str, Any]] = {}
    qs = settings.questions
    for aspect in dict.fromkeys([*qs.aspects, *state.accepted]):
        per_aspect[aspect] = {
            "questions": state.accepted.get(aspect, 0),
            "target": qs.per_aspect if aspect in qs.aspects else 0,
            "exhausted": aspect in state.exhausted,
            "gave_up": state.given_up.get(aspect) if state.accepted.get(aspect, 0) < qs.per_aspect else None,
            "first_turn": dict.fromkeys(ANSWER_KINDS, 0) | {"unasked": 0},
        }
    sources = SourceTally()
    for q in ledgers.questions():
        if is_followup(q):
            continue
        first = answers.turn(str(q.get("id")), 1)
        sources.add(q, first[0] if first is not None else None)
        aspect = str(q.get("aspect", ""))
        if aspect not in per_aspect:
            continue
        kind = first[0] if first is not None else "unasked"
        per_aspect[aspect]["first_turn"][kind] = per_aspect[aspect]["first_turn"].get(kind, 0) + 1

    summary = answer_stats(answers, top=TOP_STATES, examples=EXAMPLES)
    report: dict[str, Any] = {
        "generated": iso_time(now if now is not None else _dt.datetime.now().timestamp()),
        "out_dir": str(settings.out_dir),
        "questions": {"accepted": sum(state.accepted.values()), "target": qs.per_aspect * len(qs.aspects),
                      "corpus": state.corpus_questions},
        "aspects": per_aspect,
        "sources": sources.sources(),
        "coverage": sources.coverage(ledgers.events),
        "off_passage": (off_passage_answers(settings.data_dir, sources.answered,
                                            lambda conv: answers.answered_row(conv, 1))
                        if qs.check_passage_terms and sources.answered else None),
        "conversations": {
            "finished": state.finished,
            "pending": len(state.pending),
            "gave_up": state.gave_up,
            "short": state.short,
            "keep_short": settings.conversations.keep_short,
            "in_dataset": conversations,
            # Answered conversations the current settings leave out of the
            # dataset, or cut (see pipeline.outputs.dataset.conversations_with_sources).
            "left_out": dict(left_out or {}),
            # Conversations the resume plan no longer continues, by why.
            "set_aside": dict(state.set_aside),
        },
        "outcomes": {k: summary.by_kind.get(k, 0) for k in ANSWER_KINDS},
        "backends": summary.by_backend,
        "answer_rows": summary.rows,
        "no_answer_states": [
            {"state": g.value, "kind": g.kind, "count": g.count, "examples": g.examples}
            for g in summary.no_answer_states
        ],
        "gate_rejections": [
            {"reason": g.value, "count": g.count, "examples": g.examples} for g in summary.gate_rejections
        ],
        "dropped_questions": all_runs(ledgers.events, "dropped"),
        "gate_edits": all_runs(ledgers.events, "edited"),
        "unusable_replies": _unusable_replies(ledgers.events),
        "short": short_aspects(settings, state),
        "command": settings.command("qa"),
        "answer_chars": _lengths(summary.answer_chars),
        "latency": {"rag_all_runs": _latency(summary.rag_seconds)},
        "usage": usage_totals(state.usage),
        "identity": identity_report(settings),
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
            "unusable": dict(Counter(stats.get("unusable") or {}).most_common()),
            "rejected": dict(Counter(stats.get("rejected") or {}).most_common()),
            "usage": usage_totals(run.get("usage") or {}),
            "latency": {
                "llm": _latency(run.get("llm_seconds") or ()),
                "rag": _latency(run.get("rag_seconds") or ()),
            },
            "questions_per_hour": _per_hour(int(run.get("questions_new", 0)), seconds),
            "answers_per_hour": _per_hour(sum(outcomes.values()), seconds),
        }
    return report


def gave_up_label(aspect: Mapping[str, Any]) -> str:
    why = aspect.get("gave_up")
    if why == "saturated":
        return "saturated" + ("" if aspect.get("exhausted") else " (reopened by the settings)")
    return "unusable replies (asked again next run)" if why else ""


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
            lines.append("Questions dropped this run (parser, screen, dedup): " + drop_reasons(run["dropped"]))
            lines.append("")
        if run["unusable"]:
            lines.append("LLM replies with nothing usable this run: " + drop_reasons(run["unusable"]))
            lines.append("")
    if report["short"]:
        lines += [f"**{short_summary(report['short'])}**: {short_advice(report['short'], report['command'])}.", ""]

    q = report["questions"]
    if report["aspects"]:  # none with [questions] source = "corpus" and no earlier aspect questions
        lines += ["## Questions per aspect (all runs)", "",
                  f"{q['accepted']} of {q['target']} questions written.", ""]
        rows = []
        for aspect, a in report["aspects"].items():
            ft = a["first_turn"]
            rows.append([aspect, f"{a['questions']}/{a['target']}", ft.get("answered", 0),
                         sum(v for k, v in ft.items() if k not in ("answered", "unasked")),
                         ft.get("unasked", 0), gave_up_label(a)])
        lines += _table(["aspect", "questions", "answered", "no answer", "not asked yet", "gave up"], rows)
        lines.append("")

    c = report["conversations"]
    lines += render_coverage(report)
    lines += ["## Answers (all runs, latest attempt of each turn)", ""]
    lines.append(", ".join(f"{k} {v}" for k, v in report["outcomes"].items()))
    lines.append("")
    backends = report.get("backends") or {}
    if backends:
        lines += ["By the backend that made them (HuixiangDou: grounded by the RAG server with its "
                  "own vetoes; local: BM25 passages + one LLM call, no vetoes):", ""]
        lines += _table(["backend", *ANSWER_KINDS],
                        [[b, *(counts.get(k, 0) for k in ANSWER_KINDS)] for b, counts in backends.items()])
        lines.append("")
    in_ds = "unknown" if c["in_dataset"] is None else c["in_dataset"]
    lines.append(f"Conversations: {c['finished']} finished, {c['pending']} still to ask, "
                 f"{c['gave_up']} given up after repeated failures; {in_ds} in the dataset.")
    if c.get("short"):
        fate = ("kept in the dataset with the turns they have" if c.get("keep_short", True) else
                "left out of the dataset when under [conversations] min_turns (keep_short = false)")
        lines.append(f"Short: {c['short']} ended before their target turns, every fresh follow-up "
                     f"skipped, vetoed or rejected; {fate}.")
    declined = sum(report["outcomes"].get(k, 0) for k in ("skipped", "vetoed"))
    if declined:
        lines.append(f"{declined} questions were skipped or vetoed: once the knowledge base is improved, "
                     f"`{report['command']} --retry skipped,vetoed` asks them again.")
    lines.append("")
    if c.get("left_out"):
        lines.append("Not in the dataset as made, by the current settings (the ledgers keep every row; "
                     "restore the settings to bring them back): "
                     + ", ".join(f"{why} {n}" for why, n in c["left_out"].items()) + ".")
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
    edits = report["gate_edits"]
    lines.append("Answers the gate changed, kept or not (all finished runs; `pipeline/qa/gate.py` names each rule): "
                 + (", ".join(f"{k} {v}" for k, v in edits.items()) if edits else "none."))
    lines.append("")

    lines += ["## Questions dropped (all finished runs)", ""]
    dropped = report["dropped_questions"]
    lines.append(drop_reasons(dropped) if dropped else "None.")
    lines.append("")

    un = report["unusable_replies"]
    lines += ["## LLM replies with nothing usable (all runs)", ""]
    if un["by_kind"]:
        lines += _table(["kind", "count", "for", "what to do"],
                        [[k, n, ", ".join(f"{p} {c[k]}" for p, c in un["by_purpose"].items() if k in c),
                          un["advice"].get(k, "")] for k, n in un["by_kind"].items()])
        if un["refused_examples"]:
            lines += ["", "Refused by the provider (each such item is skipped; the run goes on):", ""]
            lines += [f"- {e['purpose']} {e['where']}: {_cell(e['provider'])}" for e in un["refused_examples"]]
    else:
        lines.append("None.")
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
    if report.get("identity"):
        lines += identity_section(report["identity"])
    return "\n".join(lines)


def write_report(out_dir: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` under ``out_dir``, each atomically."""
    md, js = out_dir / REPORT_MD, out_dir / REPORT_JSON
    with atomic_writer(js) as fh:
        fh.write(json.dumps(report, ensure_ascii=False, indent=2).encode() + b"\n")
    with atomic_writer(md) as fh:
        fh.write(render_markdown(report).encode())
    return md, js
