"""The identity records a user trains on, and what the report says of them.

``identity.jsonl`` (``[identity] output_name``) holds one XTuner conversation
record per accepted answer, in ledger order, the system prompt on turn 1, as
``conversations.jsonl`` does, so the two mix in any proportion. The report's
identity section counts records per language and kind against their targets,
rejected answers by reason, dropped questions, given-up questions, and tokens.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.outputs.dataset import conversation_record, write_dataset
from pipeline.qa.identity import Facts, IdentityState, fold, targets
from pipeline.settings import Settings
from pipeline.store.ledger import iter_ledger

__all__ = [
    "identity_ledger", "identity_records", "identity_report", "identity_section", "identity_summary",
    "load_identity", "write_identity",
]


def identity_ledger(settings: Settings) -> Path:
    """The identity ledger, ``<out_dir>/state/identity.jsonl``."""
    return settings.state_dir / "identity.jsonl"


def load_identity(settings: Settings, *, repair: bool = False) -> IdentityState:
    """The identity state from the ledger; ``repair`` cuts a torn last line
    (the run does), else nothing is written (the report beside a live run)."""
    facts = Facts.of(settings.identity, settings.conversations)
    rows = iter_ledger(identity_ledger(settings), repair=repair)
    return fold(rows, facts, settings.identity.max_answer_chars)


def identity_report(settings: Settings) -> dict[str, Any] | None:
    """:func:`identity_summary` of the ledger, or None when no identity run was made."""
    if not identity_ledger(settings).exists():
        return None
    return identity_summary(settings, load_identity(settings))


def identity_records(state: IdentityState, want: Mapping[tuple[str, str], int]) -> Iterable[dict[str, Any]]:
    """One XTuner record per accepted answer, in ledger order, at most ``want``
    per (language, kind): a language dropped from the settings, or records
    lowered, leaves the ledger as it is and the file as the settings say."""
    system = state.facts.system_prompt
    taken: Counter[tuple[str, str]] = Counter()
    for q in state.accepted():
        slot = (q.lang, q.kind)
        if q.answer is None or taken[slot] >= want.get(slot, 0):
            continue
        taken[slot] += 1
        yield conversation_record(system, [(q.text, q.answer)])


def write_identity(settings: Settings, state: IdentityState) -> int:
    """Write :func:`identity_records` to ``[identity] output_name`` under
    ``out_dir`` atomically; the record count."""
    want = targets(settings.identity.languages, settings.identity.records)
    return write_dataset(settings.out_dir / settings.identity.output_name, identity_records(state, want))


def identity_summary(settings: Settings, state: IdentityState) -> dict[str, Any]:
    """The report's identity section as plain data."""
    ident = settings.identity
    want = targets(ident.languages, ident.records)
    slots: dict[str, dict[str, Any]] = {}
    for (lang, kind), target in want.items():
        qs = state.in_slot(lang, kind)
        slots[f"{lang}/{kind}"] = {
            "records": min(target, sum(q.answer is not None for q in qs)),
            "target": target,
            "given_up": sum(q.answer is None and q.attempts >= ident.max_attempts for q in qs),
        }
    rejected: Counter[str] = Counter()
    for q in state.questions.values():
        rejected.update(q.reasons)
    price_in, price_out = settings.llm.price_input_per_m, settings.llm.price_output_per_m
    return {
        "file": str(settings.out_dir / ident.output_name),
        "records": sum(s["records"] for s in slots.values()),
        "target": ident.records,
        "slots": slots,
        "rejected_answers": dict(rejected.most_common()),
        "dropped_questions": dict(Counter(state.dropped).most_common()),
        "question_calls": sum(state.calls.values()),
        "tokens": {"prompt": state.tokens[0], "completion": state.tokens[1]},
        "cost": round((state.tokens[0] * price_in + state.tokens[1] * price_out) / 1e6, 6),
        "last_run": state.runs[-1] if state.runs else None,
    }


def _counts(d: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) if d else "none"


def identity_section(summary: Mapping[str, Any]) -> list[str]:
    """The report.md lines of :func:`identity_summary`."""
    lines = ["## Identity records", "",
             f"{summary['records']} of {summary['target']} records in `{summary['file']}`."]
    last = summary.get("last_run")
    if last:
        lines.append(f"Last identity run: **{last.get('status')}**"
                     + (f" ({last['detail']})" if last.get("detail") else "") + ".")
    lines += ["", "| language/kind | records | given up |", "|---|---|---|"]
    for slot, s in summary["slots"].items():
        lines.append(f"| {slot} | {s['records']}/{s['target']} | {s['given_up']} |")
    t = summary["tokens"]
    lines += [
        "",
        f"Answers rejected (the answer must say the assistant's name and no other model or company): "
        f"{_counts(summary['rejected_answers'])}.",
        f"Questions dropped: {_counts(summary['dropped_questions'])}.",
        f"{summary['question_calls']} question-writing calls; {t['prompt']} prompt + "
        f"{t['completion']} completion tokens; cost {summary['cost']:.4f}.",
        "",
    ]
    return lines

