"""Passages of the corpus for the passage question writer: cut, counted, selected.

The corpus is read with the pretraining stage's own reader and splitter
(:func:`pipeline.corpus.discover`, :func:`~pipeline.corpus.probe`,
:func:`~pipeline.corpus.iter_spans`, the ``[pretrain]`` separators and
patterns) at the passage's own size, ``[questions] passage_size`` and
``passage_overlap``: a passage holds a few facts, not a chapter. Verbatim
repeats are dropped (the first is kept), as the pretraining stage does.

A passage's id is a digest of its text, so it stays the same when its file
is renamed or text elsewhere in the file changes (a resume does not ask it
again), and changes when the passage itself does. Its span is in characters
of the file's decoded, newline-normalised, cleaned text (see :func:`~pipeline.corpus.iter_spans`).

Selection, under ``[questions] max_passages`` (0: every passage): while the
budget lasts every file gets one passage (the files with most passages first), so each file
has a chance to be covered; the rest of the budget is shared among files in
proportion to the passages they have left (largest remainder). Within a file
the passages are a sample drawn with ``passage_seed`` and the file's path; they
are asked round robin over the files (see :attr:`PassagePlan.selected_ids`). The same corpus and settings give the same selection on every
run and machine; a file added or removed changes the shares, not the draw of
the other files.

Two passes keep memory small: the first holds per passage only its span and
id (about 90 bytes), the second reads back the text of the selected passages only.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import UndecodableFile
from pipeline.settings import SEED_SEPARATORS, Settings

__all__ = ["FileShare", "Passage", "PassagePlan", "allot", "draw", "file_text", "passage_id", "plan_passages"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_GAP: Any = object()  # zip_longest's filler: no item


@dataclass(frozen=True, slots=True)
class Passage:
    """One selected passage: ``text == <file's text>[start:end]``."""

    id: str
    file: str  # relative to data_dir, '/'-separated
    start: int
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class FileShare:
    """One corpus file: how many passages it holds and how many were selected."""

    file: str
    size: int  # bytes
    passages: int
    selected: int


@dataclass(slots=True)
class PassagePlan:
    """The corpus as the passage question writer sees it."""

    files: list[FileShare]
    skipped: list[tuple[str, str]]  # files that could not be read: (file, reason)
    # In asking order: round robin over the files (each file's first selected
    # passage, then each one's second, ...), so a run cut short (quota, Ctrl-C)
    # has touched as many files as it could.
    selected_ids: list[str]
    passages: list[Passage] = field(default_factory=list)  # with texts (read=True), same order

    @property
    def total(self) -> int:
        return sum(f.passages for f in self.files)

    def event(self) -> dict[str, Any]:
        """The ``passages`` run event: what the report's coverage table counts against."""
        return {
            "event": "passages",
            "total": self.total,
            "selected": len(self.selected_ids),
            "files": [[f.file, f.size, f.passages, f.selected] for f in self.files],
            "skipped": [[rel, reason] for rel, reason in self.skipped],
        }


def file_text(path: Path) -> str:
    """The whole text of a corpus file as spans count it: decoded,
    newline-normalised and cleaned, block by block, as :func:`plan_passages`
    read it. Raises :class:`~pipeline.errors.UndecodableFile` or ``OSError``."""
    from pipeline.corpus import iter_blocks, probe

    return "".join(iter_blocks(path, probe(path).encoding))


def passage_id(text: str) -> str:
    """Stable 16-hex-digit id of a passage's text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def allot(counts: Sequence[int], budget: int) -> list[int]:
    """How many passages each file gives, for files holding ``counts``
    passages and ``budget`` passages in all (0: every one). See the module
    docstring; pure and deterministic (ties go to the earlier file)."""
    total = sum(counts)
    if budget <= 0 or budget >= total:
        return list(counts)
    shares = [0] * len(counts)
    by_size = sorted(range(len(counts)), key=lambda i: -counts[i])  # stable: ties in file order
    left = budget
    for i in by_size:
        if left == 0:
            break
        if counts[i]:
            shares[i] = 1
            left -= 1
    room = [c - s for c, s in zip(counts, shares)]
    pool = sum(room)
    if left == 0 or pool == 0:
        return shares
    # Largest remainder, in integers: each file's exact share is left*room/pool.
    remainders = []
    for i, r in enumerate(room):
        whole, part = divmod(left * r, pool)
        shares[i] += whole
        remainders.append((-part, i))
    extra = left - sum(left * r // pool for r in room)
    for _, i in sorted(remainders)[:extra]:
        shares[i] += 1
    return shares


def draw(n: int, k: int, seed: int, file: str) -> list[int]:
    """``k`` of the indices ``0..n-1``, ascending, drawn with ``seed`` and the
    file's path (a ``random.Random`` seeded with a string: the same on every
    run and machine)."""
    if k >= n:
        return list(range(n))
    return sorted(random.Random(f"{seed}:{file}").sample(range(n), k))


@dataclass(slots=True)
class _Surveyed:
    path: Path
    rel: str
    encoding: str
    size: int
    spans: array[int]  # start, end of each kept passage
    ids: list[str]


def _relative(path: Path, root: Path) -> str:
    return path.name if root.is_file() else path.relative_to(root).as_posix()


def plan_passages(settings: Settings, *, read: bool = True) -> PassagePlan:
    """Cut ``data_dir`` into passages and select them (see the module
    docstring). With ``read``, the selected passages' texts are read back
    (:attr:`PassagePlan.passages`); without, only their ids (a dry run)."""
    qs, p = settings.questions, settings.pretrain
    # Imported here: the splitter pulls in LangChain (~0.1 s), which a run
    # with [questions] source = "aspects" never needs at start-up.
    from pipeline.corpus import discover, iter_spans, make_splitter, probe

    separators = SEED_SEPARATORS if p.seed_compatible else p.separators
    splitter = make_splitter(qs.passage_size, qs.passage_overlap, separators, p.seed_compatible)
    root = settings.data_dir
    seen: set[str] = set()
    surveyed: list[_Surveyed] = []
    skipped: list[tuple[str, str]] = []
    for path in discover(root, p.patterns):
        rel = _relative(path, root)
        try:
            info = probe(path)
            spans: array[int] = array("q")
            ids: list[str] = []
            for start, end, text in iter_spans(path, splitter, info.encoding, overlap=qs.passage_overlap):
                pid = passage_id(text)
                if pid in seen:
                    continue
                seen.add(pid)
                spans.extend((start, end))
                ids.append(pid)
        except UndecodableFile as exc:
            skipped.append((rel, exc.reason))
            continue
        except OSError as exc:
            skipped.append((rel, f"cannot read ({exc.strerror})"))
            continue
        surveyed.append(_Surveyed(path, rel, info.encoding, info.size, spans, ids))
    for rel, reason in skipped:
        log.warning("passages: skipped %s: %s", rel, reason)

    shares = allot([len(s.ids) for s in surveyed], qs.max_passages)
    plan = PassagePlan(files=[], skipped=skipped, selected_ids=[])
    ids_per_file: list[list[str]] = []
    passages_per_file: list[list[Passage]] = []
    for s, k in zip(surveyed, shares):
        chosen = draw(len(s.ids), k, qs.passage_seed, s.rel)
        plan.files.append(FileShare(s.rel, s.size, len(s.ids), len(chosen)))
        ids_per_file.append([s.ids[i] for i in chosen])
        if read and chosen:
            passages_per_file.append(_read_back(s, chosen))
    plan.selected_ids = _round_robin(ids_per_file)
    plan.passages = _round_robin(passages_per_file)
    return plan


def _round_robin(per_file: list[list[_T]]) -> list[_T]:
    """Each list's first item, then each one's second, and so on."""
    return [item for row in itertools.zip_longest(*per_file, fillvalue=_GAP) for item in row
            if item is not _GAP]


def _read_back(s: _Surveyed, chosen: Iterable[int]) -> list[Passage]:
    """The texts of passages ``chosen`` (indices, ascending) of one surveyed
    file. A passage never crosses a block of :func:`~pipeline.corpus.iter_blocks`
    (each block is split on its own), so each is a slice of one block."""
    from pipeline.corpus import iter_blocks

    wanted = [(s.spans[2 * i], s.spans[2 * i + 1], s.ids[i]) for i in chosen]
    out: list[Passage] = []
    j = 0
    base = 0
    for piece in iter_blocks(s.path, s.encoding):
        top = base + len(piece)
        while j < len(wanted) and wanted[j][1] <= top:
            start, end, pid = wanted[j]
            text = piece[start - base : end - base]
            if passage_id(text) != pid:
                raise UndecodableFile(s.path, "changed while it was being read")
            out.append(Passage(pid, s.rel, start, end, text))
            j += 1
        base = top
    return out
