"""The answer gate on real answers; prints figures, asserts nothing.

Runs the gate of the given settings over every answer (``output``) of an
XTuner conversation file, by default the 878 HuixiangDou answers of the seed
data (``../shared/seed-data/wulewule/data/huixiangdou_conversations.jsonl``
from the repository root), and prints how many answers each rule rejected or
changed, with examples, and the gate's time per answer.

    python bench/bench_gate.py [--file F] [--settings S] [--examples 3] [--show REASON]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.qa.gate import REASONS, compile_gate
from pipeline.settings import load_settings

SEED_ANSWERS = REPO.parent / "shared" / "seed-data" / "wulewule" / "data" / "huixiangdou_conversations.jsonl"


def answers(path: Path) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.extend(turn["output"] for turn in json.loads(line)["conversation"])
    return out


def short(text: str, width: int = 110) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=SEED_ANSWERS, help="XTuner conversation JSONL")
    parser.add_argument("--settings", help="settings file (default: built-in defaults)")
    parser.add_argument("--examples", type=int, default=3, help="examples shown per rule")
    parser.add_argument("--show", help="print every answer with this reason or change, in full")
    args = parser.parse_args()

    gate = compile_gate(load_settings(args.settings).conversations)
    texts = answers(args.file)
    results = [gate(t) for t in texts]
    started = time.perf_counter()
    for _ in range(3):
        for t in texts:
            gate(t)
    per_answer = (time.perf_counter() - started) / (3 * len(texts))

    reasons = Counter(r.reason for r in results if r.reason)
    changes: Counter[str] = Counter(c for r in results for c in r.changes)
    examples: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for raw, r in zip(texts, results):
        for key in ([r.reason] if r.reason else []) + list(r.changes):
            examples[key].append((raw, r.answer))

    accepted = sum(1 for r in results if r.reason is None)
    print(f"{args.file}: {len(texts)} answers, {accepted} accepted, {len(texts) - accepted} rejected; "
          f"gate {per_answer * 1e6:.1f} us per answer")
    print("\nrejected by")
    for reason in REASONS:
        print(f"  {reason:18s} {reasons[reason]:5d}")
    print("changed by (accepted or not)")
    for rule in ("cleaned", "references", "lead_in", "material_rewritten"):
        print(f"  {rule:18s} {changes[rule]:5d}")
    refs = sum(1 for r in results if r.refs)
    print(f"  answers with refs taken out: {refs}")
    for key in [*REASONS, "references", "lead_in", "material_rewritten"]:
        if not examples[key]:
            continue
        print(f"\n== {key}: {len(examples[key])}")
        for raw, out in examples[key][: args.examples]:
            print(f"  raw: {short(raw)}")
            if out != raw:
                print(f"  now: {short(out)}")
    if args.show:
        print(f"\n==== every answer with {args.show}")
        for raw, out in examples[args.show]:
            print("-" * 80)
            print(raw)
            if out != raw:
                print(">>> now:")
                print(out)


if __name__ == "__main__":
    main()
