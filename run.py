"""Command line: parse arguments, load settings, configure logging, run a stage.

    python run.py                 the whole job on [paths] data_dir
    python run.py pretrain ...    incremental-pretraining JSONL only
    python run.py qa [--dry-run] [--retry skipped,vetoed] [--retry-short]
                                  questions and answers (or what they would cost)
    python run.py status          where the QA stage stands, from its ledgers
    python run.py build           conversations.jsonl and the report, from the ledgers alone

Exit codes: 0 done; 1 failed, with a message saying what to fix (a service
refused or is down, the disk is full, or another run holds the output folder:
that is a failure to start, not a usage error, so 1 and not 75); 2 bad
settings or input; 3 finished short of per_aspect (the last line says why and
what to do); 75 quota exhausted (resume later); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import InputError, PipelineError, SettingsError
from pipeline.outputs.export import FORMATS, export, read_records, source_kind
from pipeline.outputs.validate import format_problem, summary_line, validate_file
from pipeline.settings import SEED_SEPARATORS, Settings, check_pieces, load_settings
from pipeline.store.schema import ANSWER_KINDS

# The one map from how a command ended to the process's exit code: stages
# return a status, main() below turns exceptions into codes.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SHORT = 3
EXIT_QUOTA = 75
EXIT_INTERRUPTED = 130

# Statuses of the qa stage (pipeline.qa.stage); any other (fatal, refused,
# servers_down, crashed) is a failure.
QA_EXIT = {"complete": EXIT_OK, "short": EXIT_SHORT, "quota": EXIT_QUOTA, "interrupted": EXIT_INTERRUPTED}
# The identity command's: "short" is fewer valid records than asked for, not a failure.
IDENTITY_EXIT = {**QA_EXIT, "short": EXIT_OK}


def exit_code(status: str, codes: dict[str, int] = QA_EXIT) -> int:
    """The exit code of a run that ended with ``status``."""
    return codes.get(status, EXIT_FAILED)

log = logging.getLogger("pipeline")


_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _configure_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    # The level is on the handler too: a library that sets its own logger to
    # DEBUG when imported (bm25s does) must not make the screen verbose.
    screen = logging.StreamHandler(sys.stderr)
    screen.setLevel(level)
    logging.basicConfig(level=level, format=_FORMAT, datefmt="%H:%M:%S", handlers=[screen])
    if not verbose:
        # httpx (and its fork httpx2, under some openai transports) logs every
        # request at INFO: tens of thousands of lines a night.
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _screen_filter(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def _configure_qa_logging(settings: Settings, live: bool) -> tuple[Any, Callable[[], None]]:
    """Send every record of the run to ``<out_dir>/qa.log`` too; on a terminal,
    log through the live display's console (so lines print above it) and keep
    the plain progress lines off the screen, where the display shows the same.
    Returns that console (None when not live) and a function undoing all this."""
    from pipeline.outputs.progress import LINE_LOGGER

    root = logging.getLogger()
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(settings.out_dir / "qa.log", encoding="utf-8")
    to_file.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root.addHandler(to_file)
    # The file wants INFO even when something else configured logging first.
    level = root.level
    if level == logging.NOTSET or level > logging.INFO:
        root.setLevel(logging.INFO)
    to_file.setLevel(root.level)  # see _configure_logging
    removed: list[logging.Handler] = []
    added: list[logging.Handler] = [to_file]
    console = None
    if live:
        from rich.console import Console
        from rich.logging import RichHandler

        console = Console(stderr=True)
        for handler in list(root.handlers):
            if type(handler) is logging.StreamHandler:
                root.removeHandler(handler)
                removed.append(handler)
        screen = RichHandler(console=console, show_path=False, markup=False, level=root.level)
        screen.addFilter(lambda record: record.name != LINE_LOGGER)
        root.addHandler(screen)
        added.append(screen)

    # Records marked file_only (the error that ends a run, which main() prints
    # itself) reach qa.log but not the screen.
    screens = [h for h in root.handlers if h is not to_file]
    for handler in screens:
        handler.addFilter(_screen_filter)

    def undo() -> None:
        root.setLevel(level)
        for handler in screens:
            handler.removeFilter(_screen_filter)
        for handler in added:
            root.removeHandler(handler)
            handler.close()
        for handler in removed:
            root.addHandler(handler)

    return console, undo


def cmd_pretrain(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.corpus import run_pretrain

    p = settings.pretrain
    seed = args.seed_compatible or p.seed_compatible
    root = Path(args.root_path) if args.root_path else settings.data_dir
    save = Path(args.save_path) if args.save_path else settings.out_dir / p.output_name
    size = args.chunk_size if args.chunk_size is not None else p.chunk_size
    overlap = args.chunk_overlap if args.chunk_overlap is not None else p.chunk_overlap
    # Flags bypass the settings loader's checks: the same rule, naming the flags.
    check_pieces(size, overlap, size_name="--chunk-size", overlap_name="--chunk-overlap")
    summary = run_pretrain(
        root,
        save,
        chunk_size=size,
        chunk_overlap=overlap,
        separators=SEED_SEPARATORS if seed else p.separators,
        patterns=p.patterns,
        seed_compatible=seed,
        bad_bytes_limit=p.bad_bytes_limit,
    )
    print(summary.line())
    return EXIT_OK


def cmd_qa(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "dry_run", False):
        return cmd_dry_run(settings)
    if not settings.llm.api_key:
        print(
            f"error: the QA stage needs an LLM API key: set the environment variable "
            f"{settings.llm.api_key_env} (its name is [llm] api_key_env in {settings.source})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    live = sys.stderr.isatty()
    console, undo_logging = _configure_qa_logging(settings, live)
    try:
        log.info("qa run on %s (settings: %s)", settings.out_dir, settings.source)
        # `python run.py` (the whole job) reaches here without qa's own flags.
        result = _run_async(_qa_with_progress(settings, live, console, getattr(args, "retry", ()),
                                              retry_short=getattr(args, "retry_short", False)))
        log.info("%s", result.line(), extra={"file_only": True})  # printed below
    except (PipelineError, OSError, BaseExceptionGroup) as exc:
        log.error("qa stopped: %s", exc, extra={"file_only": True})
        raise
    finally:
        undo_logging()
    print(result.line())
    return exit_code(result.status)


async def _qa_with_progress(settings: Settings, live: bool, console: Any, retry: tuple[str, ...], *,
                            retry_short: bool = False) -> Any:
    from pipeline.outputs.progress import Progress
    from pipeline.qa.stage import run_qa

    async with Progress(settings, live=live, console=console) as progress:
        return await run_qa(settings, on_graph=progress.attach, retry=retry, retry_short=retry_short)


# Answer kinds ``qa --retry`` may ask again: every kind but an answer.
RETRY_KINDS = tuple(k for k in ANSWER_KINDS if k != "answered")


def _retry_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in RETRY_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"{', '.join(bad) or repr(text)}: --retry takes answer kinds, comma-separated, of "
            f"{', '.join(RETRY_KINDS)}"
        )
    return kinds


def cmd_identity(args: argparse.Namespace, settings: Settings) -> int:
    """Make (or resume) the identity records: <out_dir>/identity.jsonl."""
    if not settings.llm.api_key:
        print(
            f"error: the identity command needs an LLM API key: set the environment variable "
            f"{settings.llm.api_key_env} (its name is [llm] api_key_env in {settings.source})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from pipeline.qa.identity_stage import run_identity

    result = _run_async(run_identity(settings))
    print(result.line())
    return exit_code(result.status, IDENTITY_EXIT)


def cmd_dry_run(settings: Settings) -> int:
    """Print what ``qa`` would do, from the ledgers alone: no call, no lock, no write."""
    from pipeline.outputs.dry_run import plan_run
    from pipeline.store.view import open_ledgers, state_from_ledgers, state_from_rows

    from pipeline.qa.stage import earlier_backend
    from pipeline.services.backend import choose_backend, reachable_servers

    with open_ledgers(settings.state_dir) as ledgers:
        state = state_from_ledgers(settings, ledgers)
    print(f"dry run: nothing is called; output folder {settings.out_dir}")
    earlier = earlier_backend(state, settings.state_dir / "answers.jsonl")
    urls = settings.huixiangdou.urls
    # Only a TCP connect, and only where the choice depends on it: no HTTP request is sent.
    up = _run_async(reachable_servers(urls)) if settings.rag.backend == "auto" and earlier is None else None
    choice = choose_backend(settings.rag.backend, earlier=earlier, up=up, urls=urls,
                            data_dir=str(settings.paths.data_dir))
    print(f"answers would come from: {choice.line()}")
    passages: list[str] = []
    if settings.questions.source != "aspects":
        from pipeline.qa.passages import plan_passages

        selection = plan_passages(settings, read=False)
        passages = selection.selected_ids
        print(f"passages: {len(passages)} selected of {selection.total} in {len(selection.files)} files")
    fresh = state_from_rows(settings, {})
    if state.total_questions() or state.pending or state.finished:
        whole = plan_run(settings, fresh, backend=choice.backend, passages=passages)
        print(f"the whole job: {whole.llm_calls} LLM requests, {whole.rag_requests} RAG requests, "
              f"cost about {whole.cost:.4f}")
        print(f"already done: {state.total_questions()} questions written, {state.finished} "
              f"conversations finished ({state.gave_up} given up), {len(state.pending)} pending")
        print("a resume would still do:")
    else:
        print("nothing recorded yet; the run would do:")
    for line in plan_run(settings, state, backend=choice.backend, passages=passages).lines():
        print(f"  {line}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Print where the QA stage stands, from the ledgers alone: no call, no lock, no write."""
    from pipeline.outputs.status import build_status, lock_holder, render_status
    from pipeline.store.view import open_ledgers, state_from_ledgers

    # Streamed and read-only: a million-row ledger costs an index entry per turn, not its rows.
    with open_ledgers(settings.state_dir) as ledgers:
        state = state_from_ledgers(settings, ledgers)
        status = build_status(settings, ledgers, state, lock_holder(settings.out_dir))
    print(render_status(status))
    return EXIT_OK


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild conversations.jsonl and the report from the ledgers alone."""
    from pipeline.qa.stage import build_outputs

    print(build_outputs(settings).line())
    return EXIT_OK


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
            f"conversations.jsonl; then run `{settings.command('qa')}`."
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


_SETTINGS_HELP = "settings file (default: settings.toml in the working directory, else built-in defaults)"


# --------------------------------------------------------------------------- validate, export
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
        report = validate_file(p, max_answer_chars=settings.conversations.max_answer_chars)
        for problem in report.problems:
            if problem.severity == "warning" and args.quiet:
                continue
            print(format_problem(p, problem))
        print(summary_line(p, report))
        if report.errors or (args.strict and report.warnings):
            failed = True
    return EXIT_FAILED if failed else EXIT_OK


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Convert conversations.jsonl (or, for ``pretrain``, the pretraining file)
    to the chosen trainer format."""
    kind = source_kind(args.format)
    if args.input:
        source = Path(args.input)
    elif kind == "pretraining":
        source = settings.out_dir / settings.pretrain.output_name
    else:
        source = settings.out_dir / "conversations.jsonl"
    out_dir = Path(args.output_dir) if args.output_dir else settings.out_dir / "export"
    name = args.name or f"{source.stem}_{args.format}"
    records = read_records(source, kind)
    if not records:
        raise InputError(f"{source}: no {kind} records to export")
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
            "Check each FILE as XTuner JSONL: one UTF-8 JSON object per line; pretraining records "
            "(one turn, empty input) or conversation records ({input, output} turns, 'system' on "
            "the first turn only), not mixed; non-empty outputs; no <|im_start|>/<|im_end|> "
            "markers. Our exports (alpaca, sharegpt, openai, pretraining text) are recognised by "
            "their keys and checked by the same rules. Warnings: blank lines, no final newline, "
            "unknown keys, answers over [conversations] max_answer_chars. Prints FILE:LINE: "
            "problems and a summary per file; exits 1 when any file has an error."
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
        help="convert conversations.jsonl (or the pretraining file) for LLaMA-Factory or OpenAI",
        description=(
            "Convert XTuner conversation records to alpaca (with history), sharegpt or OpenAI "
            "'messages' JSONL, or (--format pretrain) XTuner pretraining records to "
            "{\"text\": chunk} JSONL for LLaMA-Factory's `stage: pt`; each file is registered in "
            "<output-dir>/dataset_info.json. With --val-ratio, also a seeded validation split."
        ),
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="target format")
    p.add_argument(
        "--input",
        help="XTuner records (default: <out_dir>/conversations.jsonl; for pretrain, "
        "<out_dir>/incremental_pretraining.jsonl, i.e. [pretrain] output_name)",
    )
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description=(
            "Make XTuner fine-tuning data from a folder of domain text. "
            "With no subcommand, runs the whole job on [paths] data_dir."
        ),
    )
    parser.add_argument("--settings", metavar="FILE", help=_SETTINGS_HELP)
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
    qa.add_argument(
        "--dry-run",
        action="store_true",
        help="call nothing; print the requests, tokens, cost and time the run would take",
    )
    qa.add_argument(
        "--retry",
        type=_retry_kinds,
        default=(),
        metavar="KINDS",
        help=f"ask again the questions whose answer was of these kinds, comma-separated "
             f"({', '.join(RETRY_KINDS)}), e.g. skipped,vetoed after improving the knowledge base",
    )
    qa.add_argument(
        "--retry-short",
        action="store_true",
        help="ask again for aspects given up short of per_aspect, the saturated ones too",
    )
    qa.set_defaults(func=cmd_qa)

    status = sub.add_parser(
        "status",
        help="where the QA stage stands: progress, outcomes, cost, how the last run ended",
        description=(
            "Read the ledgers under <out_dir>/state/ (nothing is called, locked or written) and "
            "show progress per aspect, answers by HuixiangDou's last state, gate rejections, "
            "tokens and cost, how the last run ended, and the command to resume."
        ),
    )
    status.set_defaults(func=cmd_status)

    build = sub.add_parser(
        "build",
        help="rebuild conversations.jsonl and the report from the ledgers (no service, no key)",
        description=(
            "Rebuild <out_dir>/conversations.jsonl and report.md/report.json from the ledgers under "
            "<out_dir>/state/ and the current settings (system prompt, max_turns, aspects): nothing "
            "is called and no key is needed. Refused while a run holds the output folder; removes "
            "temporary files a killed write left behind."
        ),
    )
    build.set_defaults(func=cmd_build)

    identity = sub.add_parser(
        "identity",
        help="identity (self-cognition) records: who the assistant is, in its own voice",
        description=(
            "Have the LLM write varied questions a user asks an assistant about itself (who are "
            "you, what can you do, who made you, what can't you do, greetings) in each of "
            "[identity] languages, and answer each as the assistant named in [identity], "
            "consistent with [conversations] system_prompt. Every answer must say the name and "
            "no other model or company. Writes <out_dir>/identity.jsonl (XTuner records, the "
            "system prompt on turn 1) and resumes where the last run stopped."
        ),
    )
    identity.set_defaults(func=cmd_identity)

    add_validate_parser(sub)
    add_export_parser(sub)
    # Also accept the common options after the subcommand (`run.py qa --settings F`);
    # SUPPRESS keeps a value given before the subcommand from being reset.
    for subparser in sub.choices.values():
        subparser.add_argument("--settings", metavar="FILE", default=argparse.SUPPRESS, help=_SETTINGS_HELP)
        subparser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                               help="debug logging")
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
        print(f"error: {exc}{_disk_hint(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # Output piped into `head` and the like: the reader left, nothing is wrong.
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        # Before the run's own handlers are installed (start-up, probes): nothing was recorded yet.
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        # A task of the run failed (e.g. a ledger append on a full disk): show its reason, not a traceback.
        leaf = _first_leaf(group)
        if isinstance(leaf, (PipelineError, OSError)):
            print(f"error: {_describe(leaf)}{_disk_hint(leaf)}", file=sys.stderr)
            return EXIT_FAILED
        raise
    except OSError as exc:
        if _is_disk_full(exc):
            print(f"error: {_describe(exc)}{_disk_hint(exc)}", file=sys.stderr)
            return EXIT_FAILED
        raise


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first exception of a (nested) group that says why, preferring ours."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, PipelineError):
            return leaf
    return leaves[0]


def _is_disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, PipelineError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc)


def _disk_hint(exc: BaseException) -> str:
    """What is safe after a full disk, unless the message already says it."""
    if not _is_disk_full(exc) or "free some space" in str(exc):
        return ""
    return (
        ". The disk is full: every row recorded before this is kept in the ledgers under "
        "<out_dir>/state/; free some space, then run the same command again to resume"
    )


if __name__ == "__main__":
    sys.exit(main())
