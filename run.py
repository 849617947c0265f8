"""Command line: parse arguments, load settings, configure logging, run a stage.

    python run.py                 the whole job on [paths] data_dir
    python run.py pretrain ...    incremental-pretraining JSONL only
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from pipeline.cli_formats import add_export_parser, add_validate_parser
from pipeline.errors import InputError, PipelineError, SettingsError
from pipeline.settings import SEED_SEPARATORS, Settings, load_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("pipeline")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def cmd_pretrain(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.corpus import run_pretrain

    p = settings.pretrain
    seed = args.seed_compatible or p.seed_compatible
    root = Path(args.root_path) if args.root_path else settings.data_dir
    save = Path(args.save_path) if args.save_path else settings.out_dir / p.output_name
    size = args.chunk_size if args.chunk_size is not None else p.chunk_size
    overlap = args.chunk_overlap if args.chunk_overlap is not None else p.chunk_overlap
    # Flags bypass the settings loader's range checks, so check them here.
    if size < 1:
        raise SettingsError(f"--chunk-size: expected a value >= 1, got {size}")
    if not 0 <= overlap < size:
        raise SettingsError(
            f"--chunk-overlap: expected a value >= 0 and less than the chunk size ({size}), "
            f"got {overlap}"
        )
    summary = run_pretrain(
        root,
        save,
        chunk_size=size,
        chunk_overlap=overlap,
        separators=SEED_SEPARATORS if seed else p.separators,
        patterns=p.patterns,
        seed_compatible=seed,
    )
    print(summary.line())
    return EXIT_OK


def cmd_qa(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.qa import run_qa

    if not settings.llm.api_key:
        print(
            f"error: the QA stage needs an LLM API key: set the environment variable "
            f"{settings.llm.api_key_env} (its name is [llm] api_key_env in {settings.source})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    result = _run_async(run_qa(settings))
    print(result.line())
    return result.exit_code


def cmd_all(args: argparse.Namespace, settings: Settings) -> int:
    for name in ("root_path", "save_path", "chunk_size", "chunk_overlap"):
        setattr(args, name, None)
    args.seed_compatible = False
    code = cmd_pretrain(args, settings)
    if code != EXIT_OK:
        return code
    if not settings.llm.api_key:
        print(
            f"QA stage skipped: no LLM key. Set the environment variable "
            f"{settings.llm.api_key_env} (named by [llm] api_key_env in {settings.source}) "
            f"and start HuixiangDou ({', '.join(settings.huixiangdou.urls)}) to make "
            f"conversations.jsonl; then run `python run.py qa`."
        )
        return EXIT_OK
    return cmd_qa(args, settings)


def _run_async(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description=(
            "Make XTuner fine-tuning data from a folder of domain text. "
            "With no subcommand, runs the whole job on [paths] data_dir."
        ),
    )
    parser.add_argument(
        "--settings",
        metavar="FILE",
        help="settings file (default: settings.toml in the working directory, else built-in defaults)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=cmd_all)
    sub = parser.add_subparsers(title="subcommands", metavar="COMMAND")

    pre = sub.add_parser(
        "pretrain",
        help="cut the corpus into chunks: XTuner incremental-pretraining JSONL",
        description=(
            "Cut every *.txt and *.md file under the root (recursively, in sorted order) into "
            "chunks with LangChain's recursive splitter, tuned for Chinese, and write one "
            '{"conversation": [{"input": "", "output": chunk}]} per line, plus a manifest.'
        ),
    )
    pre.add_argument("--root-path", help="file or folder to read (default: [paths] data_dir)")
    pre.add_argument(
        "--save-path", help="output JSONL (default: <out_dir>/incremental_pretraining.jsonl)"
    )
    pre.add_argument("--chunk-size", type=int, help="characters per chunk (default 1024)")
    pre.add_argument("--chunk-overlap", type=int, help="characters of overlap (default 50)")
    pre.add_argument(
        "--seed-compatible",
        action="store_true",
        help="reproduce the reference script's separators and chunks exactly",
    )
    pre.set_defaults(func=cmd_pretrain)

    qa = sub.add_parser(
        "qa",
        help="write questions with the LLM, answer them with HuixiangDou: conversations.jsonl",
        description=(
            "Write questions about every aspect with the LLM, ask each one of the HuixiangDou "
            "servers, and build XTuner conversation records from the grounded answers. "
            "Every answer is checkpointed: run it again to resume where it stopped."
        ),
    )
    qa.set_defaults(func=cmd_qa)

    add_validate_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        settings = load_settings(args.settings)
        return args.func(args, settings)
    except (SettingsError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
