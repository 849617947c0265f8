"""Convert XTuner conversation records for other trainers.

Input: ``conversations.jsonl``, one ``{"conversation": [{"system"?, "input",
"output"}, ...]}`` per line. Output, one record per conversation, as JSONL
(LLaMA-Factory reads ``.jsonl`` as well as ``.json`` arrays, and JSONL is what
OpenAI fine-tuning takes and what can be streamed and checked line by line):

``alpaca``    LLaMA-Factory: ``instruction`` = last question, ``input`` = "",
              ``output`` = last answer, ``system``, ``history`` = earlier
              ``[question, answer]`` pairs
``sharegpt``  LLaMA-Factory: ``conversations`` of ``{"from": "human"|"gpt",
              "value"}`` plus ``system``
``openai``    ``{"messages": [{"role": "system"|"user"|"assistant", "content"}]}``:
              OpenAI fine-tuning, and LLaMA-Factory (registered with OpenAI's tags)

and, from pretraining records (``{"conversation": [{"input": "", "output": text}]}``):

``pretrain``  ``{"text": chunk}``: LLaMA-Factory's pretraining input (``stage: pt``)

A ``dataset_info.json`` beside the files registers them for LLaMA-Factory
(entries of other datasets in an existing file are kept). An optional
validation split is drawn with a fixed seed, so a re-run gives the same split.

Pure transforms (``to_*``, ``from_*``, :func:`split`, :func:`dataset_info_entry`)
are separate from the I/O (:func:`read_records`, :func:`export`).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from pipeline.errors import InputError
from pipeline.jsonl import atomic_writer, write_jsonl_atomic
from pipeline.outputs.validate import Kind, check_record

__all__ = [
    "FORMATS",
    "ExportResult",
    "Format",
    "dataset_info_entry",
    "export",
    "from_alpaca",
    "from_openai",
    "from_sharegpt",
    "read_conversations",
    "read_records",
    "source_kind",
    "split",
    "to_alpaca",
    "to_openai",
    "to_pretrain",
    "to_sharegpt",
]

log = logging.getLogger(__name__)

Format = Literal["alpaca", "sharegpt", "openai", "pretrain"]
FORMATS: tuple[Format, ...] = ("alpaca", "sharegpt", "openai", "pretrain")
DATASET_INFO = "dataset_info.json"

T = TypeVar("T")


# --------------------------------------------------------------------------
# Pure transforms


def _unpack(record: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """System prompt (first turn only; XTuner's rule) and (question, answer) pairs."""
    turns = record["conversation"]
    system = turns[0].get("system", "") or ""
    return system, [(t["input"], t["output"]) for t in turns]


def _pack(system: str, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """An XTuner conversation record; ``system`` is left out when empty."""
    if not pairs:
        raise ValueError("a conversation needs at least one question and answer")
    turns: list[dict[str, str]] = []
    for n, (q, a) in enumerate(pairs):
        turn = {"system": system} if n == 0 and system else {}
        turn["input"] = q
        turn["output"] = a
        turns.append(turn)
    return {"conversation": turns}


def to_alpaca(record: Mapping[str, Any]) -> dict[str, Any]:
    """XTuner record -> LLaMA-Factory alpaca record with ``history``."""
    system, pairs = _unpack(record)
    *history, (question, answer) = pairs
    return {
        "instruction": question,
        "input": "",
        "output": answer,
        "system": system,
        "history": [[q, a] for q, a in history],
    }


def to_sharegpt(record: Mapping[str, Any]) -> dict[str, Any]:
    """XTuner record -> LLaMA-Factory sharegpt record (``human``/``gpt`` turns)."""
    system, pairs = _unpack(record)
    conversations: list[dict[str, str]] = []
    for q, a in pairs:
        conversations.append({"from": "human", "value": q})
        conversations.append({"from": "gpt", "value": a})
    return {"conversations": conversations, "system": system}


def to_openai(record: Mapping[str, Any]) -> dict[str, Any]:
    """XTuner record -> OpenAI chat fine-tuning record (``messages``)."""
    system, pairs = _unpack(record)
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    for q, a in pairs:
        messages.append({"role": "user", "content": q})
        messages.append({"role": "assistant", "content": a})
    return {"messages": messages}


def to_pretrain(record: Mapping[str, Any]) -> dict[str, Any]:
    """XTuner pretraining record -> LLaMA-Factory pretraining record ``{"text": chunk}``."""
    return {"text": record["conversation"][0]["output"]}


def from_alpaca(record: Mapping[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory alpaca record -> XTuner record. ``input``, when present,
    is joined to ``instruction`` with a newline, as LLaMA-Factory does."""
    question = record["instruction"]
    if record.get("input"):
        question = f"{question}\n{record['input']}"
    pairs = [(q, a) for q, a in record.get("history") or []]
    pairs.append((question, record["output"]))
    return _pack(record.get("system") or "", pairs)


def _pairs(
    items: Sequence[Mapping[str, Any]], role: str, content: str, user: str, assistant: str
) -> list[tuple[str, str]]:
    if len(items) % 2:
        raise ValueError(f"expected {user}/{assistant} pairs, got {len(items)} messages")
    pairs: list[tuple[str, str]] = []
    for i in range(0, len(items), 2):
        ask, reply = items[i], items[i + 1]
        if ask[role] != user or reply[role] != assistant:
            raise ValueError(
                f"message {i + 1}: expected {user!r} then {assistant!r}, "
                f"got {ask[role]!r} then {reply[role]!r}"
            )
        pairs.append((ask[content], reply[content]))
    return pairs


def from_sharegpt(record: Mapping[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory sharegpt record -> XTuner record."""
    pairs = _pairs(record["conversations"], "from", "value", "human", "gpt")
    return _pack(record.get("system") or "", pairs)


def from_openai(record: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI ``messages`` record -> XTuner record."""
    messages = list(record["messages"])
    system = ""
    if messages and messages[0]["role"] == "system":
        system = messages.pop(0)["content"]
    return _pack(system, _pairs(messages, "role", "content", "user", "assistant"))


CONVERTERS: dict[Format, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "alpaca": to_alpaca,
    "sharegpt": to_sharegpt,
    "openai": to_openai,
    "pretrain": to_pretrain,
}


def source_kind(fmt: Format) -> Kind:
    """The kind of XTuner record ``fmt`` is made from."""
    return "pretraining" if fmt == "pretrain" else "conversation"


def split(records: Sequence[T], ratio: float, seed: int) -> tuple[list[T], list[T]]:
    """Split into (train, validation) with ``round(len * ratio)`` validation
    records drawn by a seeded RNG; both keep the input order.

    With ``0 < ratio`` and at least two records, each side gets at least one
    record, so asking for a split always yields two usable files; a single
    record always goes to train.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"validation ratio must be in [0, 1), got {ratio}")
    n = len(records)
    k = round(n * ratio)
    if ratio > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    elif n < 2:
        k = 0
    chosen = set(random.Random(seed).sample(range(n), k))
    train = [r for i, r in enumerate(records) if i not in chosen]
    val = [r for i, r in enumerate(records) if i in chosen]
    return train, val


_ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "system": "system",
    "history": "history",
}
_SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
_SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
}
# LLaMA-Factory's defaults are sharegpt's (conversations/from/value/human/gpt),
# so the entry names the OpenAI keys itself. Its formatting is "sharegpt", not
# "openai": LLaMA-Factory 0.9.5's "openai" converter appends "\ndetailed
# thinking off" to every system prompt (seen through its loader), which would
# train the model on a system prompt nobody deploys; "sharegpt" with these tags
# reads the same file, system message included, unchanged.
_OPENAI_COLUMNS = {"messages": "messages"}
_OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def dataset_info_entry(fmt: Format, file_name: str) -> dict[str, Any]:
    """The ``dataset_info.json`` entry that registers ``file_name`` (relative
    to the folder of ``dataset_info.json``, LLaMA-Factory's ``dataset_dir``)."""
    if fmt == "alpaca":
        return {"file_name": file_name, "formatting": "alpaca", "columns": dict(_ALPACA_COLUMNS)}
    if fmt == "sharegpt":
        return {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": dict(_SHAREGPT_COLUMNS),
            "tags": dict(_SHAREGPT_TAGS),
        }
    if fmt == "openai":
        return {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": dict(_OPENAI_COLUMNS),
            "tags": dict(_OPENAI_TAGS),
        }
    if fmt == "pretrain":
        # Alpaca formatting with the text as the prompt: what `stage: pt` reads.
        return {"file_name": file_name, "columns": {"prompt": "text"}}
    raise ValueError(f"LLaMA-Factory has no dataset_info entry for format {fmt!r}")


# --------------------------------------------------------------------------
# I/O


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        with path.open("rb") as fh:
            yield from enumerate(fh, start=1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def read_records(path: str | os.PathLike[str], kind: Kind = "conversation") -> list[dict[str, Any]]:
    """Read XTuner records of ``kind`` from ``path``.

    Blank lines are skipped; anything the validator calls an error (bad JSON,
    wrong shape, ``system`` after turn 1, template markers) or a record of the
    other kind raises :class:`InputError` naming the file and line, because
    exporting it would silently train on the wrong thing."""
    p = Path(path)
    records: list[dict[str, Any]] = []
    for number, raw in _iter_lines(p):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{p}:{number}: invalid JSON: {exc}") from exc
        found, _, problems = check_record(obj)
        errors = [msg for msg, sev in problems if sev == "error"]
        if errors:
            raise InputError(
                f"{p}:{number}: {'; '.join(errors)} (run `python run.py validate {p}`)"
            )
        if found != kind:
            if found == "pretraining":
                why = "a pretraining record (one turn, empty input); this format converts conversation records"
            else:
                why = ("a conversation record; --format pretrain converts pretraining records "
                       "(one turn, empty input)")
            raise InputError(f"{p}:{number}: {why}")
        records.append(obj)
    return records


def read_conversations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """:func:`read_records` of conversation records."""
    return read_records(path, "conversation")


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :func:`export` wrote."""

    format: Format
    conversations: int
    turns: int
    files: tuple[tuple[Path, int], ...]
    dataset_info: Path | None = None
    dataset_names: tuple[str, ...] = field(default=())

    def line(self) -> str:
        """One human-readable summary line."""
        files = ", ".join(f"{p} ({n})" for p, n in self.files)
        if source_kind(self.format) == "pretraining":
            what = f"{self.conversations} pretraining texts"
        else:
            what = f"{self.conversations} conversations ({self.turns} turns)"
        text = f"exported {what} as {self.format}: {files}"
        if self.dataset_info is not None:
            text += f"; registered {', '.join(self.dataset_names)} in {self.dataset_info}"
        return text


def _update_dataset_info(path: Path, name: str, entries: Mapping[str, Any]) -> None:
    """Merge ``entries`` into ``path``, keeping other datasets' entries but
    dropping this export's stale ones (a split registered by an earlier run)."""
    info: dict[str, Any] = {}
    if path.exists():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot read the existing file: {exc}") from exc
        if not isinstance(info, dict):
            raise InputError(f"{path}: expected a JSON object of dataset entries")
    for stale in (name, f"{name}_train", f"{name}_val"):
        info.pop(stale, None)
    info.update(entries)
    with atomic_writer(path) as fh:
        fh.write(json.dumps(info, ensure_ascii=False, indent=2).encode("utf-8") + b"\n")


def export(
    records: Sequence[Mapping[str, Any]],
    fmt: Format,
    output_dir: str | os.PathLike[str],
    name: str,
    *,
    val_ratio: float = 0.0,
    seed: int = 42,
) -> ExportResult:
    """Convert ``records`` to ``fmt`` and write ``<name>.jsonl`` (or
    ``<name>_train.jsonl`` and ``<name>_val.jsonl`` with a split) under
    ``output_dir``, each atomically, and register them in
    ``output_dir/dataset_info.json`` for LLaMA-Factory. ``records`` are of
    :func:`source_kind` of ``fmt``."""
    out = Path(output_dir)
    convert = CONVERTERS[fmt]
    if val_ratio > 0:
        train, val = split(records, val_ratio, seed)
        parts = [(f"{name}_train", train), (f"{name}_val", val)]
    else:
        parts = [(name, list(records))]
    files: list[tuple[Path, int]] = []
    entries: dict[str, Any] = {}
    for dataset, part in parts:
        target = out / f"{dataset}.jsonl"
        count = write_jsonl_atomic(target, (convert(r) for r in part))
        files.append((target, count))
        entries[dataset] = dataset_info_entry(fmt, target.name)
    info_path = out / DATASET_INFO
    _update_dataset_info(info_path, name, entries)
    turns = sum(len(r["conversation"]) for r in records)
    log.info("export %s: %d conversations to %s", fmt, len(records), out)
    return ExportResult(
        format=fmt,
        conversations=len(records),
        turns=turns,
        files=tuple(files),
        dataset_info=info_path,
        dataset_names=tuple(entries),
    )
