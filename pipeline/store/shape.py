"""What shaped the rows of each run, and which rows the current settings keep.

Pure. A run records its **shape** in its ``run_start`` event: the settings
that decide what a question, an answer and a conversation are (topic,
language, question source, aspects, model, answer backend, the turns a
conversation takes, a fingerprint of each prompt and of the answer gate), with
``seq_from``, the ``seq`` its first accepted question takes. That is each
row's reference to its run at no cost per row: a first-turn question row's
``seq`` falls in exactly one run's range (:class:`RunShapes`); answer rows
carry the run's :func:`shape_id` (schema field ``shape``).

From the shapes, two things follow:

:func:`change_line`
    what changed since the last run, and what it means for the rows already
    made, in one line (None when nothing did);
:class:`Scope`
    which first-turn questions the current settings keep: those of an aspect
    still in ``[questions] aspects`` (questions written from corpus passages
    have no aspect and are always kept) and written under the current topic.
    The resume plan continues only those, and ``conversations.jsonl`` holds
    only those; the rest stay in the ledgers, counted, and come back if the
    settings do.

Rows written before shapes were recorded have no run to look up: they count
as current.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import orjson

from pipeline.settings import Settings

__all__ = ["RunShapes", "Scope", "change_line", "changes", "shape_id", "shape_of"]

# [conversations] keys that are not the answer gate's; every other key of the
# section (and any added later) is part of the gate's fingerprint.
_NOT_GATE: Final = frozenset({"system_prompt", "min_turns", "max_turns", "keep_short", "followup_prompt"})


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def shape_of(settings: Settings) -> dict[str, Any]:
    """The settings that shape rows, as plain data for the ``run_start`` event
    (prompts and the gate as 12-hex fingerprints: a change shows, the text
    need not be stored again each run)."""
    q, c, r = settings.questions, settings.conversations, settings.rag
    gate = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in _NOT_GATE}
    return {
        "topic": q.topic,
        "language": q.language,
        "source": getattr(q, "source", "aspects"),
        "aspects": list(q.aspects),
        "model": settings.llm.model,
        "backend": r.backend,
        "min_turns": c.min_turns,
        "max_turns": c.max_turns,
        "keep_short": getattr(c, "keep_short", True),
        "prompts": {
            "system prompt": _fingerprint(c.system_prompt),
            "question prompts": _fingerprint([q.system_prompt, q.user_prompt,
                                              getattr(q, "passage_system_prompt", ""),
                                              getattr(q, "passage_user_prompt", "")]),
            "follow-up prompt": _fingerprint(c.followup_prompt),
            "local answer prompt": _fingerprint(r.answer_prompt),
        },
        "gate": _fingerprint(gate),
    }


def shape_id(shape: Mapping[str, Any]) -> str:
    """A 12-hex id of a shape: what answer rows carry."""
    return _fingerprint(shape)


class RunShapes:
    """The shapes the runs of one output folder recorded, in order, from its
    event ledger: which shape a first-turn question's ``seq`` was written under."""

    def __init__(self, events: Iterable[Mapping[str, Any]]) -> None:
        self._froms: list[int] = []
        self._shapes: list[Mapping[str, Any]] = []
        for ev in events:
            shape, start = ev.get("shape"), ev.get("seq_from")
            if ev.get("event") == "run_start" and isinstance(shape, dict) and type(start) is int:
                self._froms.append(start)
                self._shapes.append(shape)

    @property
    def last(self) -> Mapping[str, Any] | None:
        """The shape of the last run that recorded one."""
        return self._shapes[-1] if self._shapes else None

    def at(self, seq: int) -> Mapping[str, Any] | None:
        """The shape a question of ``seq`` was written under (None: before shapes were recorded)."""
        i = bisect.bisect_right(self._froms, seq) - 1
        return self._shapes[i] if i >= 0 else None

    def other_topics(self, topic: str) -> list[tuple[int, int, str]]:
        """``[lo, hi)`` seq ranges written under a topic other than ``topic``, with that topic."""
        out: list[tuple[int, int, str]] = []
        for i, shape in enumerate(self._shapes):
            lo = self._froms[i]
            hi = self._froms[i + 1] if i + 1 < len(self._froms) else 1 << 63
            if lo < hi and shape.get("topic") != topic:
                if out and out[-1][1] == lo and out[-1][2] == shape.get("topic"):
                    out[-1] = (out[-1][0], hi, out[-1][2])
                else:
                    out.append((lo, hi, str(shape.get("topic"))))
        return out


class Scope:
    """Which first-turn questions the current settings keep (see the module).

    ``aspects``: the current ``[questions] aspects``; ``other_topics``: seq
    ranges of :meth:`RunShapes.other_topics`. :meth:`why_out` says why a
    question is left out, or None when it is kept."""

    def __init__(self, aspects: Iterable[str], other_topics: Sequence[tuple[int, int, str]] = ()) -> None:
        self.aspects = frozenset(aspects)
        self.other_topics = list(other_topics)

    @classmethod
    def of(cls, settings: Settings, events: Iterable[Mapping[str, Any]]) -> Scope:
        return cls(settings.questions.aspects, RunShapes(events).other_topics(settings.questions.topic))

    def why_out(self, aspect: str, seq: int) -> str | None:
        """``"topic <t>"`` for a question written under another topic,
        ``"aspect <a>"`` for one of an aspect no longer in the settings, else None.
        An empty ``aspect`` (a question of a corpus passage) is never out by aspect."""
        for lo, hi, topic in self.other_topics:
            if lo <= seq < hi:
                return f"topic {topic}"
        if aspect and aspect not in self.aspects:
            return f"aspect {aspect}"
        return None

    def keeps_block(self, aspects: Iterable[str], seqs: Sequence[int]) -> bool:
        """Whether every question of a block (its aspects and seqs) is kept:
        then a reader need not ask row by row."""
        if any(a and a not in self.aspects for a in set(aspects)):
            return False
        if self.other_topics and seqs:
            lo, hi = min(seqs), max(seqs)
            return not any(a <= hi and lo < b for a, b, _ in self.other_topics)
        return True


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two shapes, each as a short phrase."""
    out: list[str] = []
    for key in ("topic", "language", "source", "model", "backend"):
        if old.get(key) != new.get(key):
            out.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    for key in ("min_turns", "max_turns", "keep_short"):
        if old.get(key) != new.get(key):
            out.append(f"{key} {old.get(key)} -> {new.get(key)}")
    was, now = list(old.get("aspects") or ()), list(new.get("aspects") or ())
    gone, added = [a for a in was if a not in now], [a for a in now if a not in was]
    if gone or added:
        out.append("aspects " + ", ".join([*(f"-{a}" for a in gone), *(f"+{a}" for a in added)]))
    old_prompts, new_prompts = old.get("prompts") or {}, new.get("prompts") or {}
    out += [name for name in new_prompts if old_prompts.get(name) != new_prompts[name]]
    if old.get("gate") != new.get("gate"):
        out.append("answer gate")
    return out


def change_line(old: Mapping[str, Any] | None, new: Mapping[str, Any], *, made: int,
                set_aside: Mapping[str, int]) -> str | None:
    """One line on a run resuming under changed settings: what changed, and
    what it means for the ``made`` conversations already in the ledgers
    (``set_aside``: conversations the current settings leave out, by
    :meth:`Scope.why_out` reason). None when nothing changed or there is no
    earlier shape to compare with."""
    if old is None:
        return None
    what = changes(old, new)
    if not what:
        return None
    means: list[str] = []
    out = sum(set_aside.values())
    if out:
        means.append(f"{out} of {made} conversations already made are left out of conversations.jsonl and "
                     f"not continued ({', '.join(f'{why}: {n}' for why, n in set_aside.items())}; kept in "
                     "the ledgers, back if the settings are)")
    if old.get("topic") != new["topic"]:
        means.append(f"every aspect gets questions written afresh about {new['topic']!r}")
    if old.get("max_turns", 0) > new["max_turns"]:
        n = new["max_turns"]
        means.append(f"longer conversations are cut to {n} turn{'s' * (n != 1)} in conversations.jsonl")
    if new["max_turns"] > old.get("max_turns", new["max_turns"]) or new["min_turns"] > old.get("min_turns", 0):
        means.append("conversations short of their new turn count get more turns")
    if old.get("prompts", {}).get("system prompt") != new["prompts"]["system prompt"]:
        means.append("every conversation gets the new system prompt")
    kept = [w for w in what if w.split(" ")[0] in ("model", "backend", "language", "answer", "question",
                                                    "follow-up", "local", "source")]
    if kept:
        means.append("rows already made stay as they were made; new ones follow the new settings")
    return (f"settings changed since the last run on this out_dir: {'; '.join(what)}. "
            f"What it means: {'; '.join(means)}.")
