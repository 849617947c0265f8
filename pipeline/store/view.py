"""An output folder's ledgers opened for reading only: what ``status``,
``qa --dry-run``, the report and the dataset read.

Nothing is written or created: a torn last line is skipped, never cut, so
these may run beside a live run. The question ledger is re-read on demand,
the answer ledger is an :class:`~pipeline.store.answers.AnswerIndex` (never
its rows in memory), the event ledger (small) is held.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from pipeline.settings import Settings
from pipeline.store.answers import AnswerIndex
from pipeline.store.ledger import iter_ledger
from pipeline.store.resume import RunState, derive_state, ledger_paths, plan_builder
from pipeline.store.shape import Scope

__all__ = ["Ledgers", "iter_rows", "open_ledgers", "state_from_ledgers", "state_from_rows"]

# A bigger read gains little here and would only raise the peak at the end
# of a run (a block, its lines and their rows are alive at once).
_READ_BLOCK: Final = 1024 * 1024


def iter_rows(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Rows of one ledger, streamed without modifying the file.

    A missing file is empty. An unterminated or unparsable *last* line is a
    write in progress (or a torn tail the next run cuts) and is skipped; a bad
    line anywhere else raises :class:`~pipeline.errors.InputError` naming file and line."""
    return iter_ledger(path, block_size=_READ_BLOCK, repair=False)


class Ledgers:
    """The ledgers of one output folder, read-only. Use as a context manager
    (the answer index keeps its file open)."""

    def __init__(self, questions: Callable[[], Iterable[Mapping[str, Any]]], answers: AnswerIndex,
                 events: Sequence[Mapping[str, Any]]) -> None:
        self._questions = questions
        self.answers = answers
        self.events = events

    @classmethod
    def of_rows(cls, rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> Ledgers:
        """Ledgers already read, by name (``questions``, ``answers``, ``events``)."""
        questions = list(rows.get("questions", ()))
        return cls(lambda: questions, AnswerIndex.of_rows(rows.get("answers", ())),
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
    """The ledgers of ``state_dir``, read-only (see the module docstring)."""
    paths = ledger_paths(state_dir)
    answers = AnswerIndex.of_file(paths["answers"], repair=False, block_size=_READ_BLOCK)
    try:
        events = list(iter_rows(paths["events"]))
    except BaseException:
        answers.close()
        raise
    return Ledgers(lambda: iter_rows(paths["questions"]), answers, events)


def state_from_ledgers(settings: Settings, ledgers: Ledgers) -> RunState:
    """The resume plan (as ``pipeline.qa.stage.load_state`` derives it),
    without writing anything."""
    builder = plan_builder(settings, ledgers.answers, ledgers.events)
    for row in ledgers.questions():
        builder.add(row)
    return builder.finish(ledgers.events)


def state_from_rows(settings: Settings, rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> RunState:
    """The plan of :func:`~pipeline.store.resume.derive_state` for rows
    already read, by ledger name (``{}``: a fresh run)."""
    c = settings.conversations
    events = list(rows.get("events", ()))
    return derive_state(
        rows.get("questions", ()),
        rows.get("answers", ()),
        events,
        aspects=settings.questions.aspects,
        min_turns=c.min_turns,
        max_turns=c.max_turns,
        max_answer_attempts=settings.run.max_answer_attempts,
        scope=Scope.of(settings, events),
        per_aspect=settings.questions.per_aspect,
        max_stale_rounds=settings.questions.max_stale_rounds,
    )
