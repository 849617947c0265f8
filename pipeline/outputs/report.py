"""The run report and ``status``: what the ledgers say, for a person.

Transforms (:func:`build_report`, :func:`render_markdown`,
:func:`build_status`, :func:`render_status`, :func:`last_run_outcome`,
:func:`percentile`) take ledgers already opened; the I/O is small and separate:

``open_ledgers``   streams ``<out_dir>/state/*.jsonl`` *without* touching them:
                   a torn last line is skipped, never cut (``status`` and
                   ``qa --dry-run`` may run beside a live run, so they must not
                   write; ``pipeline.store.ledger``'s readers do the reading, in
                   their read-only mode). The answer ledger becomes an
                   :class:`AnswerTally` (a packed int per turn, 8 bytes per
                   row), never a list of rows, so the report at the end of a
                   big run costs little memory; the run's end builds
                   ``conversations.jsonl`` from the same tally
``read_ledgers``   the same rules, every row in memory (small folders, tests)
``lock_holder``    who holds the run lock, from the lock file's content and a
                   signal-0 probe of the pid; the lock itself is never taken
``write_report``   ``report.md`` and ``report.json``, each atomically

Scopes: counts, outcomes, states, lengths, tokens and cost cover every run
recorded in the ledgers (what the dataset is made of); the ``run`` section
(dropped questions, latencies, throughput) covers the run that just ended,
because that is what its live counters saw.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import unicodedata
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple

import orjson

from pipeline.outputs.coverage import SourceTally, off_passage_answers, render_coverage
from pipeline.store.schema import ANSWER_KINDS
from pipeline.errors import InputError
from pipeline.jsonl import atomic_writer
from pipeline.outputs.identity import identity_report, identity_section
from pipeline.store.ledger import headless_answer, iter_ledger, iter_ledger_spans
from pipeline.services.replies import ADVICE
from pipeline.settings import Settings
from pipeline.store.shape import Scope
from pipeline.store.resume import RunState, StateBuilder, derive_state, ledger_paths

__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "AnswerTally",
    "Ledgers",
    "build_report",
    "build_status",
    "last_run_outcome",
    "lock_holder",
    "percentile",
    "iter_rows",
    "open_ledgers",
    "read_ledgers",
    "read_rows",
    "render_markdown",
    "render_status",
    "resume_command",
    "state_from_ledgers",
    "state_from_rows",
    "write_report",
]

REPORT_MD = "report.md"
REPORT_JSON = "report.json"

# How many no-answer states and gate reasons the report lists, and how many
# example questions each: enough to see a pattern in the knowledge base.
TOP_STATES = 10
EXAMPLES = 3
_SNIPPET = 80


# --------------------------------------------------------------------------- reading (read-only)

# A bigger read gains little here and would only raise the peak at the end
# of a run (a block, its lines and their rows are alive at once).
_READ_BLOCK: Final = 1024 * 1024


def iter_rows(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Rows of one ledger, streamed without modifying the file (see :func:`read_rows`)."""
    return iter_ledger(path, block_size=_READ_BLOCK, repair=False)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of one ledger, read without modifying the file.

    A missing file is empty. An unterminated or unparsable *last* line is a
    write in progress (or a torn tail the next run cuts) and is skipped; a bad
    line anywhere else raises :class:`InputError` naming file and line."""
    return list(iter_rows(path))


def read_ledgers(state_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every ledger of ``state_dir`` by name, read-only (see :func:`read_rows`).

    Holds every row: fine for a small folder or a test; the report and
    ``status`` stream instead (:func:`open_ledgers`)."""
    return {name: read_rows(path) for name, path in ledger_paths(state_dir).items()}


def state_from_rows(settings: Settings, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> RunState:
    """The resume plan of :func:`pipeline.store.resume.derive_state` for these rows."""
    c = settings.conversations
    return derive_state(
        rows.get("questions", []),
        rows.get("answers", []),
        rows.get("events", []),
        aspects=settings.questions.aspects,
        min_turns=c.min_turns,
        max_turns=c.max_turns,
        max_answer_attempts=settings.run.max_answer_attempts,
        scope=Scope.of(settings, rows.get("events", [])),
        per_aspect=settings.questions.per_aspect,
        max_stale_rounds=settings.questions.max_stale_rounds,
    )


class _Facts(NamedTuple):
    """What the report and ``status`` need of one answer row, short of its texts.

    Interned: a ledger has a handful of distinct (kind, state, reason)
    combinations, so every turn shares one of a few of these."""

    kind: str  # for StateBuilder: "" when missing or not a string
    kind_text: str  # str(row.get("kind", "")): summaries and groups
    kind_first: str  # str(row.get("kind")): the first-turn table
    answered: bool
    rejected: bool
    state_text: str  # str(row.get("state", ""))
    state_group: str  # str(row.get("state") or "(none)")
    reason_text: str | None  # counted in by_reason (not answered, a reason given), else None
    reason_group: str  # str(row.get("reason") or "(none)")
    backend: str  # the row's backend; rows older than the field: told by their server, "" if none


def _backend(row: Mapping[str, Any]) -> str:
    backend = row.get("backend")
    if isinstance(backend, str):
        return backend
    server = row.get("server")
    if not isinstance(server, str) or not server:
        return ""
    return "local" if server == "local" else "huixiangdou"


def _facts(row: Mapping[str, Any]) -> _Facts:
    raw = row.get("kind")
    kind_text = str(row.get("kind", ""))
    reason = row.get("reason")
    return _Facts(
        raw if isinstance(raw, str) else "",
        kind_text,
        str(raw),
        raw == "answered",
        raw == "rejected",
        str(row.get("state", "")),
        str(row.get("state") or "(none)"),
        str(reason) if kind_text != "answered" and reason else None,
        str(reason or "(none)"),
        _backend(row),
    )


# A turn's latest row, packed into one int: ref << 72 | answer chars << 40 |
# failed rows << 24 | facts id. ``ref`` (unbounded, so on top) is a byte span
# for a file, a row index for rows in memory.
_FID_MASK: Final = (1 << 24) - 1
_FAILS_SHIFT: Final = 24
_FAILS_MAX: Final = (1 << 16) - 1
_CHARS_SHIFT: Final = 40
_CHARS_MAX: Final = (1 << 32) - 1
_REF_SHIFT: Final = 72
_HEX16: Final = frozenset("0123456789abcdef")


def _conv_key(conv: str) -> int | str:
    # A 16-hex question id as one int: 36 bytes against ~65 for the string.
    return int(conv, 16) if len(conv) == 16 and _HEX16.issuperset(conv) else conv


class SpanReader:
    """Byte spans of a file by offset, served from the last aligned window read.

    The dataset build reads each answered row back in about file order (rows
    are appended as answers arrive), so one ``pread`` of a 64 KiB window
    serves the next hundred-odd rows, where a ``pread`` per row was a system
    call per question. A span outside the window reads its own window."""

    WINDOW: Final = 64 * 1024

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._start = 0
        self._data = b""

    def read(self, offset: int, length: int) -> bytes:
        i = offset - self._start
        if i < 0 or i + length > len(self._data):
            self._start = offset - offset % self.WINDOW
            want = max(self.WINDOW, offset + length - self._start)
            self._data = os.pread(self._fd, want, self._start)
            i = offset - self._start
        return self._data[i : i + length]


class AnswerTally:
    """The answer ledger boiled down to what the report and ``status`` show,
    in one pass, holding no row.

    Kept: the number of rows, every row's RAG seconds (an ``array('d')``, for
    the percentiles), and per turn one packed int: the latest row's interned
    facts (kind, state, reason), its answer length, how many of the turn's
    rows failed, and where the row is, to read back the few rows the report
    quotes. Conversations and their turns iterate in the order
    :func:`pipeline.outputs.dataset.latest_turns` gives them (first appearance), so
    "most common first" ties and example questions come out as they did when
    every row was held. About 150 bytes per turn; rows as dicts took ~3 KB.

    Also a :data:`pipeline.store.resume.TurnOf` / :data:`pipeline.store.resume.RowOf` pair
    (:meth:`turn`, :meth:`read`) for :class:`pipeline.store.resume.StateBuilder`, and
    the dataset's row lookup (:meth:`answered_row`), so one pass over the
    answer ledger serves the dataset, the resume plan and the report."""

    def __init__(self, read: Callable[[int], Mapping[str, Any]], close: Callable[[], None] | None = None) -> None:
        """``read`` turns a ref given to :meth:`add` back into its row."""
        self.rows = 0
        self.ignored = 0  # rows without a valid conv/turn
        self.rag_seconds = array("d")
        self.facts: list[_Facts] = []
        self._ids: dict[_Facts, int] = {}
        self._ids_of_text: dict[tuple[str, str, str, str], int] = {}  # (kind, state, reason, backend) -> facts id
        # conv -> packed turn 1 alone (the common case), or (turn, packed, turn, packed, ...)
        self._convs: dict[int | str, int | tuple[int, ...]] = {}
        self._read, self._close = read, close

    @classmethod
    def of_rows(cls, rows: Iterable[Mapping[str, Any]]) -> AnswerTally:
        """A tally of rows already in memory (they stay referenced, for :meth:`read`)."""
        held = rows if isinstance(rows, Sequence) else list(rows)
        tally = cls(held.__getitem__)
        for i, row in enumerate(held):
            tally.add(row, i)
        return tally

    @classmethod
    def of_file(cls, path: str | os.PathLike[str]) -> AnswerTally:
        """A tally of an answer ledger, streamed read-only (see :func:`read_rows`
        for the torn-tail rule). Keeps the file open for :meth:`read`: close it."""
        p = Path(path)
        try:
            fh = open(p, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            return cls(_no_row)
        spans = SpanReader(fh.fileno())

        def read(span: int) -> dict[str, Any]:
            row: dict[str, Any] = orjson.loads(spans.read(span >> 32, span & 0xFFFFFFFF))
            return row

        tally = cls(read, fh.close)
        add = tally.add
        try:
            for row, offset, length in iter_ledger_spans(p, block_size=_READ_BLOCK, repair=False):
                if not add(row, offset << 32 | length):
                    raise headless_answer(p, offset)
        except BaseException:
            fh.close()
            raise
        return tally

    def close(self) -> None:
        """Close the ledger a file tally reads back from."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> AnswerTally:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def add(self, row: Mapping[str, Any], ref: int) -> bool:
        """Count one row (file order); ``ref`` is what ``read`` turns back into it.
        False for a row without a valid ``conv``/``turn``, counted in ``ignored``."""
        self.rows += 1
        seconds = row.get("seconds")
        if isinstance(seconds, (int, float)) and seconds > 0:
            self.rag_seconds.append(float(seconds))
        conv, turn = row.get("conv"), row.get("turn")
        if not isinstance(conv, str) or type(turn) is not int or turn < 1:
            self.ignored += 1
            return False
        kind, state, reason, backend = row.get("kind"), row.get("state"), row.get("reason"), _backend(row)
        if type(kind) is str and type(state) is str and type(reason) is str:
            # The usual row: its facts follow from these four strings alone,
            # so they are worked out once per combination, not once per row.
            fid = self._ids_of_text.get((kind, state, reason, backend))
            if fid is None:
                fid = self._ids_of_text[kind, state, reason, backend] = self._fid(_facts(row))
        else:
            fid = self._fid(_facts(row))
        facts = self.facts[fid]
        chars = min(len(str(row.get("answer", ""))), _CHARS_MAX) if facts.answered else 0
        key = _conv_key(conv)
        entry = self._convs.get(key)
        old = None if entry is None else _turn_in(entry, turn)
        fails = 0 if old is None else (old >> _FAILS_SHIFT) & _FAILS_MAX
        if facts.kind == "failed" and fails < _FAILS_MAX:
            fails += 1
        packed = ref << _REF_SHIFT | chars << _CHARS_SHIFT | fails << _FAILS_SHIFT | fid
        if entry is None:
            self._convs[key] = packed if turn == 1 else (turn, packed)
        elif type(entry) is int:
            self._convs[key] = packed if turn == 1 else (1, entry, turn, packed)
        else:
            items = list(entry)
            for i in range(0, len(items), 2):
                if items[i] == turn:
                    items[i + 1] = packed
                    break
            else:
                items += (turn, packed)
            self._convs[key] = tuple(items)
        return True

    def _fid(self, facts: _Facts) -> int:
        """The id of ``facts``, interned."""
        fid = self._ids.get(facts)
        if fid is None:
            fid = self._ids[facts] = len(self.facts)
            if fid > _FID_MASK:
                raise InputError("the answer ledger has too many distinct (kind, state, reason) combinations")
            self.facts.append(facts)
        return fid

    def latest(self, conv: str, turn: int) -> int | None:
        """The packed latest row of one turn, or None when it has none."""
        entry = self._convs.get(_conv_key(conv))
        return None if entry is None else _turn_in(entry, turn)

    def turn(self, conv: str, turn: int) -> tuple[str, int, int] | None:
        """``(latest kind, failed rows, ref)`` of one turn, or None (a :data:`~pipeline.store.resume.TurnOf`)."""
        packed = self.latest(conv, turn)
        if packed is None:
            return None
        return (self.facts[packed & _FID_MASK].kind, (packed >> _FAILS_SHIFT) & _FAILS_MAX,
                packed >> _REF_SHIFT)

    def answered_row(self, conv: str, turn: int) -> Mapping[str, Any] | None:
        """The latest row of one turn when it is answered, else None without
        reading anything (a :data:`pipeline.outputs.dataset.RowOf` for the dataset,
        which stops a conversation at its first turn not answered)."""
        packed = self.latest(conv, turn)
        if packed is None or not self.facts[packed & _FID_MASK].answered:
            return None
        return self._read(packed >> _REF_SHIFT)

    def read(self, ref: int) -> Mapping[str, Any]:
        """The row at a ref of :meth:`turn` or :meth:`packed`."""
        return self._read(ref)

    def packed(self) -> Iterator[int]:
        """The packed latest row of every turn, conversation by conversation."""
        for entry in self._convs.values():
            if type(entry) is int:
                yield entry
            else:
                yield from entry[1::2]

    def fid_counts(self) -> Counter[int]:
        """Turns per facts id, ids in order of first appearance."""
        return Counter(p & _FID_MASK for p in self.packed())

    def answer_chars(self) -> array[int]:
        """The answer length of every turn whose latest row is answered."""
        answered = {i for i, f in enumerate(self.facts) if f.answered}
        return array("q", ((p >> _CHARS_SHIFT) & _CHARS_MAX for p in self.packed()
                           if p & _FID_MASK in answered))

    def summary(self) -> dict[str, Any]:
        """What :func:`pipeline.outputs.dataset.summarise` says of the same rows."""
        by_kind: Counter[str] = Counter()
        by_state: Counter[str] = Counter()
        by_reason: Counter[str] = Counter()
        by_backend: dict[str, Counter[str]] = {}
        turns = 0
        for fid, n in self.fid_counts().items():
            f = self.facts[fid]
            turns += n
            by_kind[f.kind_text] += n
            by_state[f.state_text] += n
            if f.reason_text:
                by_reason[f.reason_text] += n
            if f.backend:
                by_backend.setdefault(f.backend, Counter())[f.kind_text] += n
        return {
            "rows": self.rows,
            "turns": turns,
            "conversations": len(self._convs),
            "by_kind": dict(by_kind.most_common()),
            "by_state": dict(by_state.most_common()),
            "by_reason": dict(by_reason.most_common()),
            # latest row of each turn, by the backend that made it, then by kind
            "by_backend": {b: {k: c[k] for k in sorted(c, key=lambda k: (-c[k], k))}
                           for b, c in sorted(by_backend.items())},
        }


def _turn_in(entry: int | tuple[int, ...], turn: int) -> int | None:
    if type(entry) is int:
        return entry if turn == 1 else None
    for i in range(0, len(entry), 2):  # type: ignore[arg-type]
        if entry[i] == turn:  # type: ignore[index]
            return entry[i + 1]  # type: ignore[index]
    return None


def _no_row(ref: int) -> Mapping[str, Any]:
    raise KeyError(ref)


class Ledgers:
    """An output folder's ledgers for the report and ``status``: the question
    ledger re-read on demand, the answer ledger as an :class:`AnswerTally`,
    the (small) event ledger in memory. Use as a context manager."""

    def __init__(self, questions: Callable[[], Iterable[Mapping[str, Any]]], answers: AnswerTally,
                 events: Sequence[Mapping[str, Any]]) -> None:
        self._questions = questions
        self.answers = answers
        self.events = events

    @classmethod
    def of_rows(cls, rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> Ledgers:
        """Ledgers already read, by name (as :func:`read_ledgers` returns them)."""
        questions = list(rows.get("questions", ()))
        return cls(lambda: questions, AnswerTally.of_rows(rows.get("answers", ())),
                   list(rows.get("events", ())))

    def questions(self) -> Iterable[Mapping[str, Any]]:
        """The question-ledger rows, in file order (a fresh pass each call)."""
        return self._questions()

    def close(self) -> None:
        """Close the answer ledger."""
        self.answers.close()

    def __enter__(self) -> Ledgers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_ledgers(state_dir: Path) -> Ledgers:
    """The ledgers of ``state_dir``, streamed read-only: never cut, never
    created (a torn tail is skipped, as :func:`read_rows` does), so ``status``
    may run beside a live run. Memory: an :class:`AnswerTally`, not the rows."""
    paths = ledger_paths(state_dir)
    answers = AnswerTally.of_file(paths["answers"])
    try:
        events = read_rows(paths["events"])
    except BaseException:
        answers.close()
        raise
    return Ledgers(lambda: iter_rows(paths["questions"]), answers, events)


def _as_ledgers(ledgers: Ledgers | Mapping[str, Iterable[Mapping[str, Any]]]) -> Ledgers:
    return ledgers if isinstance(ledgers, Ledgers) else Ledgers.of_rows(ledgers)


def state_from_ledgers(settings: Settings, ledgers: Ledgers) -> RunState:
    """The resume plan (as ``pipeline.qa.stage.load_state`` derives it) from
    streamed ledgers, without writing anything."""
    c = settings.conversations
    builder = StateBuilder(
        ledgers.answers.turn,
        ledgers.answers.read,
        aspects=settings.questions.aspects,
        min_turns=c.min_turns,
        max_turns=c.max_turns,
        max_answer_attempts=settings.run.max_answer_attempts,
        scope=Scope.of(settings, ledgers.events),
    )
    for row in ledgers.questions():
        builder.add(row)
    qs = settings.questions
    return builder.finish(ledgers.events, per_aspect=qs.per_aspect, max_stale_rounds=qs.max_stale_rounds)


def lock_holder(out_dir: Path) -> dict[str, Any] | None:
    """The live holder of ``out_dir``'s run lock as ``{"pid", "host", "started"}``, or None.

    Read-only: the lock file's content is the holder's pid (emptied on a clean
    release), and the pid is probed with signal 0. A pid on another host cannot
    be probed and counts as live. (A pid reused by an unrelated process after a
    crash reads as live; rare, and ``status`` then says "running".)"""
    try:
        data = (out_dir / "state" / "run.lock").read_bytes()
        info = orjson.loads(data) if data.strip() else None
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
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


# --------------------------------------------------------------------------- pure helpers


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by nearest rank; None for no values."""
    return _ranked(sorted(values), q)


def _ranked(ordered: Sequence[Any], q: float) -> Any:
    """:func:`percentile` of values already sorted (one sort serves every percentile)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _latency(values: Iterable[float]) -> dict[str, Any]:
    ordered = sorted(values)
    p50, p95 = _ranked(ordered, 50), _ranked(ordered, 95)
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
        "p50": _ranked(ordered, 50),
        "p90": _ranked(ordered, 90),
        "max": ordered[-1] if ordered else None,
    }


def _snippet(text: str, limit: int = _SNIPPET) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _grouped(
    tally: AnswerTally, key: Callable[[_Facts], str | None], top: int, examples: int
) -> list[dict[str, Any]]:
    """Latest rows grouped by ``key`` (None: not in any group), most common
    first, with example questions: counted from the interned facts, then the
    first distinct questions of each top group read back, in ledger order."""
    counts: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    group_of: dict[int, str] = {}
    for fid, n in tally.fid_counts().items():  # ids in order of first appearance
        f = tally.facts[fid]
        value = key(f)
        if value is not None:
            group_of[fid] = value
            counts[value] += n
            kinds[value][f.kind_text] += n
    chosen = counts.most_common(top)
    seen: dict[str, list[str]] = {value: [] for value, _ in chosen}
    wanting = len(seen) if examples > 0 else 0
    for packed in tally.packed() if wanting else ():
        value = group_of.get(packed & _FID_MASK)
        found = None if value is None else seen.get(value)
        if found is None or len(found) >= examples:
            continue
        question = str(tally.read(packed >> _REF_SHIFT).get("question", ""))
        if question and question not in found:
            found.append(question)
            if len(found) >= examples:
                wanting -= 1
                if not wanting:
                    break
    return [
        {"value": value, "count": n, "kind": kinds[value].most_common(1)[0][0], "examples": seen[value]}
        for value, n in chosen
    ]


def _usage_as_of(events: Sequence[Mapping[str, Any]]) -> str | None:
    """The time of the last ``usage`` row after the last ``run_start``, or None."""
    for ev in reversed(events):
        if ev.get("event") == "usage":
            return _iso(ev.get("time"))
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


def _reasons(d: Mapping[str, int]) -> str:
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


def _short_aspects(settings: Settings, state: RunState) -> dict[str, str]:
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


def _all_runs(events: Sequence[Mapping[str, Any]], counter: str) -> dict[str, int]:
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


def _usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "calls": int(usage.get("calls", 0)),
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "completion_tokens": int(usage.get("completion_tokens", 0)),
        "cost": round(float(usage.get("cost", 0.0)), 6),
    }


def _iso(ts: Any) -> str | None:
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

    ``ledgers``: :func:`open_ledgers` (streamed: memory is an
    :class:`AnswerTally`, not the rows), or rows already read, by ledger name;
    ``state``: derived from them; ``run``: the run that just ended:
    ``{"status", "detail", "seconds", "questions_new", "stats"
    (RunStats.snapshot()), "usage" (Usage.snapshot()), "llm_seconds",
    "rag_seconds"}``, or None for a report from the ledgers alone;
    ``conversations``: records written to the dataset, when known."""
    ledgers = _as_ledgers(ledgers)
    tally = ledgers.answers
    facts = tally.facts

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
        if "conv" in q:
            continue
        first = tally.latest(str(q.get("id")), 1)
        sources.add(q, facts[first & _FID_MASK].kind_text if first is not None else None)
        aspect = str(q.get("aspect", ""))
        if aspect not in per_aspect:
            continue
        kind = facts[first & _FID_MASK].kind_first if first is not None else "unasked"
        per_aspect[aspect]["first_turn"][kind] = per_aspect[aspect]["first_turn"].get(kind, 0) + 1

    summary = tally.summary()
    report: dict[str, Any] = {
        "generated": _iso(now if now is not None else _dt.datetime.now().timestamp()),
        "out_dir": str(settings.out_dir),
        "questions": {"accepted": sum(state.accepted.values()), "target": qs.per_aspect * len(qs.aspects),
                      "corpus": state.corpus_questions},
        "aspects": per_aspect,
        "sources": sources.sources(),
        "coverage": sources.coverage(ledgers.events),
        "off_passage": (off_passage_answers(settings.data_dir, sources.answered,
                                            lambda conv: tally.answered_row(conv, 1))
                        if qs.check_passage_terms and sources.answered else None),
        "conversations": {
            "finished": state.finished,
            "pending": len(state.pending),
            "gave_up": state.gave_up,
            "short": state.short,
            "keep_short": settings.conversations.keep_short,
            "in_dataset": conversations,
            # Answered conversations the current settings leave out of the
            # dataset, or cut (see pipeline.outputs.dataset.conversations_from).
            "left_out": dict(left_out or {}),
            # Conversations the resume plan no longer continues, by why.
            "set_aside": dict(state.set_aside),
        },
        "outcomes": {k: summary["by_kind"].get(k, 0) for k in ANSWER_KINDS},
        "backends": summary["by_backend"],
        "answer_rows": summary["rows"],
        "no_answer_states": [
            {"state": g["value"], "kind": g["kind"], "count": g["count"], "examples": g["examples"]}
            for g in _grouped(tally, lambda f: None if f.answered or f.rejected else f.state_group,
                              TOP_STATES, EXAMPLES)
        ],
        "gate_rejections": [
            {"reason": g["value"], "count": g["count"], "examples": g["examples"]}
            for g in _grouped(tally, lambda f: f.reason_group if f.rejected else None, TOP_STATES, EXAMPLES)
        ],
        "dropped_questions": _all_runs(ledgers.events, "dropped"),
        "gate_edits": _all_runs(ledgers.events, "edited"),
        "unusable_replies": _unusable_replies(ledgers.events),
        "short": _short_aspects(settings, state),
        "command": resume_command(settings),
        "answer_chars": _lengths(tally.answer_chars()),
        "latency": {"rag_all_runs": _latency(tally.rag_seconds)},
        "usage": _usage(state.usage),
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
            "usage": _usage(run.get("usage") or {}),
            "latency": {
                "llm": _latency(run.get("llm_seconds") or ()),
                "rag": _latency(run.get("rag_seconds") or ()),
            },
            "questions_per_hour": _per_hour(int(run.get("questions_new", 0)), seconds),
            "answers_per_hour": _per_hour(sum(outcomes.values()), seconds),
        }
    return report


def _gave_up_label(aspect: Mapping[str, Any]) -> str:
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
            lines.append("Questions dropped this run (parser, screen, dedup): " + _reasons(run["dropped"]))
            lines.append("")
        if run["unusable"]:
            lines.append("LLM replies with nothing usable this run: " + _reasons(run["unusable"]))
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
                         ft.get("unasked", 0), _gave_up_label(a)])
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
                     "`python run.py qa --retry skipped,vetoed` asks them again.")
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
    lines.append(_reasons(dropped) if dropped else "None.")
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


# --------------------------------------------------------------------------- status


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
    ``ledgers`` as for :func:`build_report`."""
    ledgers = _as_ledgers(ledgers)
    summary = ledgers.answers.summary()
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
    short = _short_aspects(settings, state)
    return {
        "out_dir": str(settings.out_dir),
        "last_run": {
            "outcome": outcome,
            "started": _iso(last.get("time")) if last else None,
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
        "by_kind": summary["by_kind"],
        "by_backend": summary["by_backend"],
        "by_state": summary["by_state"],
        "rejections": summary["by_reason"],
        "dropped": _all_runs(ledgers.events, "dropped"),
        "usage": _usage(state.usage),
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
        extra = f"  (gave up: {_gave_up_label(a)})" if a.get("gave_up") else ""
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
        lines.append(f"conversations.jsonl rebuilt by `build` {_iso(build.get('time'))}: "
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
    lines.append(f"questions dropped: {_reasons(status['dropped'])}")
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
