"""Coverage of the corpus and yield by source, for the run report.

What a user needs to fix the knowledge base or the corpus: which files (and
how many passages) gave at least one answered question, a per-file table,
the files that gave none and why, and the share of questions answered for
aspect questions and corpus questions side by side.

Fed by the report's one pass over the question ledger (:meth:`SourceTally.add`
with each first-turn row and its latest first-turn kind) and the event
ledger: the run's ``passages`` event (the selection: every file's passages)
and one ``passage`` event per passage asked (:mod:`pipeline.qa.graph`).

With ``[questions] check_passage_terms``, :func:`off_passage_answers` reads
each answered corpus question's passage back from its file and span and
flags answers that name none of its key terms (:mod:`pipeline.qa.terms`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import UndecodableFile
from pipeline.qa.passages import file_text, passage_id
from pipeline.qa.terms import document_frequency, key_terms, names_any
from pipeline.store.schema import is_from_passage

__all__ = ["SourceTally", "off_passage_answers", "render_coverage"]

log = logging.getLogger(__name__)

_NO_ANSWER = "no answer"  # rejected, vetoed, failed or refused: asked, not answered, not skipped
_SNIPPET = 80


class SourceTally:
    """First-turn questions counted by source (aspect, corpus), and corpus
    questions by file and by passage."""

    def __init__(self) -> None:
        self.by_source: dict[str, Counter[str]] = {"aspect": Counter(), "corpus": Counter()}
        self.by_file: dict[str, Counter[str]] = {}
        self.passages_with_questions: set[str] = set()
        self.passages_answered: set[str] = set()
        self.answered: list[tuple[str, str, str, list[int]]] = []  # conv, passage, file, span

    def add(self, row: Mapping[str, Any], kind: str | None) -> None:
        """One first-turn question row and its latest first-turn kind (None: not asked yet)."""
        counts = Counter({"questions": 1})
        if kind is not None:
            counts["asked"] += 1
            counts[kind if kind in ("answered", "skipped") else _NO_ANSWER] += 1
        if not is_from_passage(row):
            self.by_source["aspect"].update(counts)
            return
        self.by_source["corpus"].update(counts)
        passage, file = str(row["passage"]), str(row.get("file", ""))
        self.by_file.setdefault(file, Counter()).update(counts)
        self.passages_with_questions.add(passage)
        if kind == "answered":
            self.passages_answered.add(passage)
            span = row.get("span")
            self.answered.append((str(row["id"]), passage, file, list(span) if isinstance(span, list) else []))

    def sources(self) -> dict[str, dict[str, Any]]:
        """Yield by source: questions, asked, answered, skipped, no answer, answered/asked."""
        out = {}
        for source, c in self.by_source.items():
            asked = c["asked"]
            out[source] = {"questions": c["questions"], "asked": asked, "answered": c["answered"],
                           "skipped": c["skipped"], "no_answer": c[_NO_ANSWER],
                           "yield": round(c["answered"] / asked, 3) if asked else None}
        return out

    def coverage(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        """The coverage section, or None when no question was ever written
        from the corpus and no run selected passages."""
        selection = next((ev for ev in reversed(events) if ev.get("event") == "passages"), None)
        asked: dict[str, str] = {}  # passage -> file
        for ev in events:
            if ev.get("event") == "passage" and "passage" in ev:
                asked[str(ev["passage"])] = str(ev.get("file", ""))
        if selection is None and not self.by_file:
            return None
        files: dict[str, dict[str, Any]] = {}
        for entry in (selection or {}).get("files", []):
            rel, _size, passages, selected = entry
            files[str(rel)] = {"passages": int(passages), "selected": int(selected)}
        for rel in [*asked.values(), *self.by_file]:
            files.setdefault(rel, {"passages": None, "selected": None})
        asked_per_file = Counter(asked.values())
        rows = []
        for rel, f in files.items():
            c = self.by_file.get(rel, Counter())
            rows.append({
                "file": rel, "passages": f["passages"], "selected": f["selected"],
                "passages_asked": asked_per_file[rel], "questions": c["questions"], "asked": c["asked"],
                "answered": c["answered"], "skipped": c["skipped"], "no_answer": c[_NO_ANSWER],
            })
        covered = [r for r in rows if r["answered"]]
        selected = sum(r["selected"] or 0 for r in rows) if selection is not None else len(asked)
        return {
            "files": len(rows),
            "files_covered": len(covered),
            "files_share": _share(len(covered), len(rows)),
            "passages_total": selection.get("total") if selection is not None else None,
            "passages_selected": selected,
            "passages_asked": len(asked),
            "passages_covered": len(self.passages_answered),
            "passages_share": _share(len(self.passages_answered), selected),
            "per_file": rows,
            "uncovered": [{"file": r["file"], "why": _why(r)} for r in rows if not r["answered"]],
            "skipped_files": [{"file": rel, "reason": reason} for rel, reason in (selection or {}).get("skipped", [])],
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def _why(row: Mapping[str, Any]) -> str:
    """Why a file gave no answered question, and what to do."""
    if row["selected"] == 0:
        return "no passage selected (raise [questions] max_passages)"
    if row["passages_asked"] == 0:
        return "not asked yet (run qa again)"
    if row["questions"] == 0:
        return "its passages gave no usable question"
    if row["asked"] < row["questions"]:
        return "questions not answered yet (run qa again)"
    if row["skipped"]:
        return "the backend found no answer (is the file in the knowledge base?)"
    return "every answer was refused, vetoed or failed"


def off_passage_answers(
    data_dir: Path,
    answered: Iterable[tuple[str, str, str, list[int]]],
    answer_of: Callable[[str], Mapping[str, Any] | None],
) -> dict[str, Any]:
    """Answered corpus questions whose answer names none of their passage's
    key terms: ``{"checked", "unreadable", "flagged": [{conv, question,
    answer, file, span}]}``. Each passage is read back from its file and
    span (a file changed since the question was written does not count)."""
    texts: dict[str, str | None] = {}
    passages: dict[str, str] = {}
    items = list(answered)
    for _conv, pid, rel, span in items:
        if pid in passages or len(span) != 2:
            continue
        if rel not in texts:
            try:
                texts[rel] = file_text(data_dir / rel)
            except (OSError, UndecodableFile) as exc:
                log.warning("check_passage_terms: cannot read %s: %s", rel, exc)
                texts[rel] = None
        text = texts[rel]
        piece = text[span[0] : span[1]] if text is not None else ""
        if piece and passage_id(piece) == pid:
            passages[pid] = piece
    df, n = document_frequency(passages.values())
    keys = {pid: key_terms(text, df, n) for pid, text in passages.items()}
    flagged = []
    checked = unreadable = 0
    for conv, pid, rel, span in items:
        if pid not in keys:
            unreadable += 1
            continue
        row = answer_of(conv)
        if row is None:
            continue
        checked += 1
        answer = str(row.get("answer", ""))
        if not names_any(answer, keys[pid]):
            flagged.append({"conv": conv, "question": str(row.get("question", "")),
                            "answer": answer[:_SNIPPET], "file": rel, "span": span})
    return {"checked": checked, "unreadable": unreadable, "flagged": flagged}


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.0f}%"


def _cell(value: Any) -> str:
    return "?" if value is None else " ".join(str(value).split()).replace("|", "\\|")


def render_coverage(report: Mapping[str, Any]) -> list[str]:
    """The report.md sections: yield by source, coverage, flagged answers."""
    lines = ["## Yield by source (all runs, first turns)", "",
             "| source | questions | asked | answered | skipped | no answer | answered / asked |",
             "|---|---|---|---|---|---|---|"]
    for source, s in report["sources"].items():
        lines.append(f"| {source} | {s['questions']} | {s['asked']} | {s['answered']} | {s['skipped']} | "
                     f"{s['no_answer']} | {_pct(s['yield'])} |")
    lines.append("")
    cov = report.get("coverage")
    if cov is None:
        return lines
    lines += ["## Coverage of the corpus", "",
              f"Files with at least one answered question: {cov['files_covered']} of {cov['files']} "
              f"({_pct(cov['files_share'])}). Passages: {cov['passages_covered']} of "
              f"{cov['passages_selected']} selected ({_pct(cov['passages_share'])}) have one"
              + (f"; {cov['passages_total']} in the corpus" if cov["passages_total"] is not None else "")
              + f"; {cov['passages_asked']} asked.", "",
              "| file | passages | selected | passages asked | questions | asked | answered | skipped | no answer |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in cov["per_file"]:
        lines.append("| " + " | ".join(_cell(r[k]) for k in (
            "file", "passages", "selected", "passages_asked", "questions", "asked", "answered", "skipped",
            "no_answer")) + " |")
    lines.append("")
    if cov["uncovered"]:
        lines += ["Files that gave no answered question (fix the knowledge base or the corpus):", ""]
        lines += [f"- `{u['file']}`: {u['why']}" for u in cov["uncovered"]]
    else:
        lines.append("Every file gave at least one answered question.")
    lines.append("")
    if cov["skipped_files"]:
        lines += ["Files that could not be read: " + ", ".join(
            f"`{s['file']}` ({s['reason']})" for s in cov["skipped_files"]), ""]
    off = report.get("off_passage")
    if off is not None:
        lines += ["## Answers naming none of their passage's key terms", "",
                  f"{len(off['flagged'])} of {off['checked']} answered corpus questions checked"
                  + (f" ({off['unreadable']} not checked: their file changed or is gone)"
                     if off["unreadable"] else "") + ". Flagged, not dropped: check them.", ""]
        if off["flagged"]:
            lines += ["| file | span | question | answer |", "|---|---|---|---|"]
            lines += [f"| {_cell(f['file'])} | {f['span']} | {_cell(f['question'])} | {_cell(f['answer'])} |"
                      for f in off["flagged"]]
            lines.append("")
    return lines
