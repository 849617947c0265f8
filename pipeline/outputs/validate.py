"""Check JSONL files against what XTuner's loader and chat templates expect.

XTuner (v0.1.x ``xtuner/dataset``) reads two record kinds, both shaped
``{"conversation": [turn, ...]}`` with turns ``{"input": str, "output": str}``:

``pretraining``   one turn, ``input`` empty, text in ``output`` (wrapped as BOS + text + EOS)
``conversation``  one or more question/answer turns; only the first may carry ``system``

It also checks what ``export`` writes, telling the format by each record's
keys (:func:`record_format`): LLaMA-Factory ``alpaca`` (``instruction``) and
``sharegpt`` (``conversations``), OpenAI ``openai`` (``messages``) and the
pretraining ``text`` records. Such a record is read back into an XTuner record
(``pipeline.outputs.export``'s ``from_*``) and checked as one, so the same rules
(non-empty answers, no template markers) hold for every format.

The core, :func:`validate_lines`, is pure: it takes the lines of a file as
bytes (as iterating a file opened in binary mode yields them) and returns a
:class:`Report` of every :class:`Problem` with its 1-based line number.
Line 0 means the file as a whole. :func:`validate_file` streams a file
through it, so a file of any size is checked in constant memory apart from
the problems found.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from pipeline.errors import InputError
from pipeline.services.replies import THINK_TAG

__all__ = [
    "ERROR_MARKERS",
    "FORMATS",
    "WARNING_MARKERS",
    "as_xtuner",
    "Kind",
    "Problem",
    "Report",
    "Severity",
    "check_record",
    "format_problem",
    "record_format",
    "record_kind",
    "summary_line",
    "validate_file",
    "validate_lines",
]

Severity = Literal["error", "warning"]
Kind = Literal["pretraining", "conversation"]

# The internlm2_chat template's own markers: text holding them would be read
# as structure by the tokenizer, so a record containing one trains garbage.
ERROR_MARKERS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")
# Special tokens of other templates and of InternLM's tool calling: worth a
# look (``<s>`` may be legitimate HTML), but not fatal for internlm2_chat.
WARNING_MARKERS: tuple[str, ...] = (
    "<s>",
    "</s>",
    "<|endoftext|>",
    "<|action_start|>",
    "<|action_end|>",
    "<|interpreter|>",
    "<|plugin|>",
)

_RECORD_KEYS = frozenset({"conversation"})
_TURN_KEYS = frozenset({"system", "input", "output"})


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: ``line`` is 1-based, 0 for the file as a whole."""

    line: int
    msg: str
    severity: Severity = "error"


@dataclass(slots=True)
class Report:
    """What :func:`validate_lines` found in one file."""

    records: int = 0
    turns: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    kind: Kind | None = None
    problems: list[Problem] = field(default_factory=list)
    format: str | None = None  # of the first record (see record_format)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def record_kind(turns: list[Any]) -> Kind:
    """Classify a structurally valid ``conversation`` list: a single turn with
    an empty input and no system prompt is pretraining text; anything else is
    a conversation."""
    if len(turns) == 1:
        turn = turns[0]
        if isinstance(turn, Mapping) and turn.get("input") == "" and not turn.get("system"):
            return "pretraining"
    return "conversation"


def _check_markers(text: str, where: str, out: list[tuple[str, Severity]]) -> None:
    for marker in ERROR_MARKERS:
        if marker in text:
            out.append((f"{where} contains the template marker {marker}", "error"))
    # A reasoning model's scratch work (<think> ... </think>) is never data.
    if "<" in text and (tag := THINK_TAG.search(text)) is not None:
        out.append((f"{where} contains a reasoning tag {tag.group()}: a model's reasoning leaked in",
                    "error"))
    for marker in WARNING_MARKERS:
        if marker in text:
            out.append((f"{where} contains the special token {marker}", "warning"))


def check_record(obj: Any) -> tuple[Kind | None, int, list[tuple[str, Severity]]]:
    """Check one parsed record against XTuner's rules.

    Returns ``(kind, turns, problems)``; ``kind`` is None when the record is
    too broken to classify. Problems are ``(message, severity)`` pairs.
    """
    problems: list[tuple[str, Severity]] = []
    if not isinstance(obj, dict):
        return None, 0, [(f"expected a JSON object, got {_type_name(obj)}", "error")]
    for key in obj:
        if key not in _RECORD_KEYS:
            problems.append((f"unknown key {key!r} (XTuner ignores it)", "warning"))
    if "conversation" not in obj:
        problems.append(("missing key 'conversation'", "error"))
        return None, 0, problems
    turns = obj["conversation"]
    if not isinstance(turns, list):
        problems.append((f"'conversation' must be an array, got {_type_name(turns)}", "error"))
        return None, 0, problems
    if not turns:
        problems.append(("'conversation' is empty", "error"))
        return None, 0, problems

    structural_ok = True
    for n, turn in enumerate(turns, start=1):
        where = f"turn {n}"
        if not isinstance(turn, dict):
            problems.append((f"{where} must be an object, got {_type_name(turn)}", "error"))
            structural_ok = False
            continue
        for key in turn:
            if key not in _TURN_KEYS:
                problems.append((f"{where}: unknown key {key!r} (XTuner ignores it)", "warning"))
        for key in ("input", "output"):
            if key not in turn:
                problems.append((f"{where}: missing key {key!r}", "error"))
                structural_ok = False
            elif not isinstance(turn[key], str):
                problems.append(
                    (f"{where}: {key!r} must be a string, got {_type_name(turn[key])}", "error")
                )
                structural_ok = False
        output = turn.get("output")
        if isinstance(output, str):
            if not output.strip():
                problems.append((f"{where}: empty output", "error"))
            _check_markers(output, f"{where} output", problems)
        inp = turn.get("input")
        if isinstance(inp, str):
            _check_markers(inp, f"{where} input", problems)
        if "system" in turn:
            system = turn["system"]
            if not isinstance(system, str):
                problems.append(
                    (f"{where}: 'system' must be a string, got {_type_name(system)}", "error")
                )
                structural_ok = False
            else:
                _check_markers(system, f"{where} system", problems)
                if n > 1 and system:
                    # XTuner prepends a system block to every turn whose
                    # system is non-empty, so this would land mid-conversation.
                    problems.append(
                        (f"{where}: 'system' is only allowed on the first turn", "error")
                    )
                elif n > 1:
                    problems.append(
                        (f"{where}: empty 'system' after the first turn (harmless; remove it)",
                         "warning")
                    )
    if not structural_ok:
        return None, len(turns), problems

    kind = record_kind(turns)
    if kind == "conversation":
        for n, turn in enumerate(turns, start=1):
            if not turn["input"].strip():
                problems.append((f"turn {n}: empty input in a conversation record", "warning"))
    return kind, len(turns), problems


FORMATS: tuple[str, ...] = ("xtuner", "alpaca", "sharegpt", "openai", "text")


def record_format(obj: Any) -> str:
    """The format of one record, by its keys: ``xtuner`` (``conversation``, and
    anything unrecognised, so XTuner's rules name what is missing), ``openai``
    (``messages``), ``sharegpt`` (``conversations``), ``alpaca``
    (``instruction``), ``text`` (only ``text``: pretraining for LLaMA-Factory)."""
    if not isinstance(obj, dict) or "conversation" in obj:
        return "xtuner"
    for key, fmt in (("messages", "openai"), ("conversations", "sharegpt"), ("instruction", "alpaca")):
        if key in obj:
            return fmt
    return "text" if set(obj) == {"text"} else "xtuner"


def as_xtuner(obj: dict[str, Any], fmt: str) -> dict[str, Any]:
    """An export-format record read back as an XTuner record; ``ValueError``
    saying what is wrong when it cannot be."""
    from pipeline.outputs.export import from_alpaca, from_openai, from_sharegpt

    if fmt == "text":
        return {"conversation": [{"input": "", "output": obj["text"]}]}
    read = {"alpaca": from_alpaca, "sharegpt": from_sharegpt, "openai": from_openai}[fmt]
    try:
        return read(obj)
    except KeyError as exc:
        raise ValueError(f"missing key {exc.args[0]!r}") from None
    except (TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"unexpected shape ({exc})") from None


def _long_answers(record: Mapping[str, Any], limit: int) -> list[tuple[str, Severity]]:
    out: list[tuple[str, Severity]] = []
    for n, turn in enumerate(record["conversation"], 1):
        size = len(turn["output"])
        if size > limit:
            out.append((f"turn {n}: answer of {size} characters, over the length limit "
                        f"([conversations] max_answer_chars = {limit})", "warning"))
    return out


def validate_lines(lines: Iterable[bytes], *, max_answer_chars: int | None = None) -> Report:
    """Check the lines of one JSONL file (each as bytes, ending in ``b"\\n"``
    except possibly the last) and return everything found. With
    ``max_answer_chars``, a conversation's answer longer than that is a warning."""
    report = Report()
    first_kind_line = 0
    first_format_line = 0
    last: bytes | None = None
    number = 0
    for number, raw in enumerate(lines, start=1):
        last = raw
        problems = report.problems
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            problems.append(Problem(number, "UTF-8 byte order mark at the start of the file"))
            raw = raw[3:]
        body = raw.rstrip(b"\n")
        if body.endswith(b"\r"):
            problems.append(Problem(number, "Windows line ending (CRLF)", "warning"))
            body = body[:-1]
        if not body.strip():
            problems.append(Problem(
                number, "blank line: it holds no record (XTuner and LLaMA-Factory load the file anyway; "
                        "remove it so line numbers count records)", "warning"))
            continue
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(number, f"not valid UTF-8 (byte {exc.start + 1} of the line)"))
            continue
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            problems.append(Problem(number, f"invalid JSON: {exc}"))
            continue
        fmt = record_format(obj)
        if report.format is None:
            report.format, first_format_line = fmt, number
        elif fmt != report.format:
            problems.append(Problem(number, f"{fmt} record in a file of {report.format} records "
                                            f"(first at line {first_format_line}); one format per file"))
        if fmt != "xtuner":
            try:
                obj = as_xtuner(obj, fmt)
            except ValueError as exc:
                problems.append(Problem(number, f"not a valid {fmt} record: {exc}"))
                continue
        kind, turns, found = check_record(obj)
        problems.extend(Problem(number, msg, sev) for msg, sev in found)
        if kind is None:
            continue
        if kind == "conversation" and max_answer_chars is not None:
            problems.extend(Problem(number, msg, sev) for msg, sev in _long_answers(obj, max_answer_chars))
        report.records += 1
        report.turns += turns
        report.kinds[kind] += 1
        if report.kind is None:
            report.kind = kind
            first_kind_line = number
        elif kind != report.kind:
            problems.append(
                Problem(
                    number,
                    f"{kind} record in a file of {report.kind} records "
                    f"(first at line {first_kind_line}); XTuner needs one kind per file",
                )
            )
    if last is None:
        report.problems.append(Problem(0, "empty file: no records"))
    elif not last.endswith(b"\n"):
        report.problems.append(Problem(
            number, "no newline at the end of the file: XTuner and LLaMA-Factory load it as is, but "
                    "`cat a.jsonl b.jsonl` would glue this record to the next file's first", "warning"))
    return report


def validate_file(path: str | os.PathLike[str], *, max_answer_chars: int | None = None) -> Report:
    """Stream the file at ``path`` through :func:`validate_lines`.

    Raises :class:`InputError` naming the file when it cannot be read."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: not a file")
    try:
        with p.open("rb") as fh:
            return validate_lines(fh, max_answer_chars=max_answer_chars)
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from exc


def format_problem(path: str | os.PathLike[str], problem: Problem) -> str:
    """``FILE:LINE: severity: message`` (``FILE: ...`` for the whole file)."""
    where = f"{path}:{problem.line}" if problem.line else f"{path}"
    return f"{where}: {problem.severity}: {problem.msg}"


def summary_line(path: str | os.PathLike[str], report: Report) -> str:
    """One line per file: records, kind, turns, errors and warnings."""
    kind = report.kind or "unknown kind"
    if len(report.kinds) > 1:
        kind = "mixed: " + ", ".join(f"{n} {k}" for k, n in sorted(report.kinds.items()))
    if report.format not in (None, "xtuner"):
        kind = f"{report.format} format, {kind}"
    errors, warnings = len(report.errors), len(report.warnings)
    verdict = "OK" if not errors else "FAILED"
    return (
        f"{path}: {verdict}: {report.records} records ({kind}), {report.turns} turns, "
        f"{errors} errors, {warnings} warnings"
    )
