"""Command-line handlers for ``validate`` and ``export``; ``run.py`` wires them in.

Exit codes follow ``run.py``: 0 ok, 1 problems found, 2 usage or input
errors (an :class:`InputError` raised here is turned into 2 by ``run.main``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.export import FORMATS, export, read_conversations
from pipeline.settings import Settings
from pipeline.validate import format_problem, summary_line, validate_file

__all__ = ["add_export_parser", "add_validate_parser", "cmd_export", "cmd_validate"]

EXIT_OK = 0
EXIT_FAILED = 1


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Check each file; print every problem and a summary per file.
    Exit 1 when any file has an error (or, with ``--strict``, a warning)."""
    paths = [Path(f) for f in args.files]
    # Name every unusable path before spending time on the others.
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: {'not a file' if p.exists() else 'no such file'}")
    failed = False
    for p in paths:
        report = validate_file(p)
        for problem in report.problems:
            if problem.severity == "warning" and args.quiet:
                continue
            print(format_problem(p, problem))
        print(summary_line(p, report))
        if report.errors or (args.strict and report.warnings):
            failed = True
    return EXIT_FAILED if failed else EXIT_OK


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Convert conversations.jsonl to the chosen trainer format."""
    source = Path(args.input) if args.input else settings.out_dir / "conversations.jsonl"
    out_dir = Path(args.output_dir) if args.output_dir else settings.out_dir / "export"
    name = args.name or f"{source.stem}_{args.format}"
    records = read_conversations(source)
    if not records:
        raise InputError(f"{source}: no conversation records to export")
    result = export(
        records, args.format, out_dir, name, val_ratio=args.val_ratio, seed=args.seed
    )
    print(result.line())
    return EXIT_OK


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a ratio in [0, 1), got {text}")
    return value


def _dataset_name(text: str) -> str:
    # The name becomes a file name beside dataset_info.json: no folders.
    if not text or "/" in text or "\\" in text or text in {".", ".."}:
        raise argparse.ArgumentTypeError(f"expected a plain name, got {text!r}")
    return text


def add_validate_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``validate`` subcommand to ``sub`` (from ``add_subparsers``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "validate",
        help="check JSONL files against XTuner's rules",
        description=(
            "Check each FILE as XTuner JSONL: one UTF-8 JSON object per line, a final newline, "
            "no blank lines; pretraining records (one turn, empty input) or conversation records "
            "({input, output} turns, 'system' on the first turn only), not mixed; non-empty "
            "outputs; no <|im_start|>/<|im_end|> markers. Prints FILE:LINE: problems and a "
            "summary per file; exits 1 when any file has an error."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL file to check")
    p.add_argument("--strict", action="store_true", help="warnings also fail (exit 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only, not warnings")
    p.set_defaults(func=cmd_validate)
    return p


def add_export_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``sub`` (from ``add_subparsers``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="convert conversations.jsonl for LLaMA-Factory or OpenAI fine-tuning",
        description=(
            "Convert XTuner conversation records to LLaMA-Factory alpaca (with history) or "
            "sharegpt JSONL, registered in <output-dir>/dataset_info.json, or to OpenAI "
            "'messages' JSONL. With --val-ratio, also a seeded validation split."
        ),
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="target format")
    p.add_argument("--input", help="conversation records (default: <out_dir>/conversations.jsonl)")
    p.add_argument("--output-dir", help="where to write (default: <out_dir>/export)")
    p.add_argument(
        "--val-ratio",
        type=_ratio,
        default=0.0,
        help="share of conversations held out for validation, in [0, 1) (default 0: no split)",
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the split (default 42)")
    p.add_argument(
        "--name",
        type=_dataset_name,
        help="dataset and file name (default: <input stem>_<format>)",
    )
    p.set_defaults(func=cmd_export)
    return p

