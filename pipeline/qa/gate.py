"""The answer gate: clean one backend answer and decide whether it may enter
the dataset. Pure: compiled once from ``[conversations]``, then a function of
the answer alone; the same gate serves every answer backend (HuixiangDou and
the local one).

In order, what the gate does to an answer (each rule that changed the text
is named in :attr:`GateResult.changes`; the first rule that rejects it is
:attr:`GateResult.reason`):

1. ``cleaned``: invisible and control characters normalised
   (:func:`pipeline.cleantext.clean_text`), whitespace tidied (not counted).
   Rejects ``empty``, ``template_marker`` (chat template markers), and
   ``too_long`` (over ``max_answer_chars``).
2. ``references``: a references header (``reference_headers``: "参考资料：",
   "References:"...) and the list under it are taken out into ``refs``.
3. ``lead_in``: boilerplate lead-ins (``strip_prefixes``: "根据提供的材料，",
   "Based on the context,") removed wherever a sentence starts, as often as
   they are stacked.
4. ``material_rewritten``: with ``material_talk = "rewrite"``, phrases about
   "the material" that can go without changing what a sentence says
   (``material_rewrites``: "资料显示，", "The documents state that")
   removed.
5. ``refusal``: refusal sentences (``refusal_patterns``: apologies, "无法回答",
   "资料中没有……", "not mentioned in the documents") rejected where they
   carry the answer: its first sentence, or at least ``refusal_share`` of
   its characters. A long answer that notes one gap in passing is kept (if
   rule 6 lets it through).
6. ``material_talk``: a sentence still talking about "the material"
   (``material_patterns``), which a user of the fine-tuned model never gave
   it; with ``material_talk = "reject"`` any such sentence, rewritable or not.
7. ``too_short``: under ``min_answer_chars``.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from re import _constants as _c  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]
from typing import Any, NamedTuple

from pipeline.cleantext import clean_text
from pipeline.errors import SettingsError
from pipeline.qa.questions import TEMPLATE_MARKERS
from pipeline.settings import ConversationSettings

__all__ = ["REASONS", "Gate", "GateResult", "compile_gate"]

# Every rejection reason, in the order the gate checks them.
REASONS: tuple[str, ...] = (
    "empty", "template_marker", "too_long", "refusal", "material_talk", "too_short",
)


class GateResult(NamedTuple):
    """What the gate made of one answer."""

    answer: str  # the cleaned answer (also when rejected: the report quotes it)
    reason: str | None  # the rejection reason, None when accepted
    refs: tuple[str, ...] = ()  # references taken out of the text
    changes: tuple[str, ...] = ()  # the rules that changed the text, in order


Gate = Callable[[str], GateResult]

# Runs of spaces inside a line become one; a line's indentation (nested
# Markdown lists) is kept.
_SPACES = re.compile(r"(?<=\S)[ \t\u3000]+")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
# What _tidy would change besides the ends; most answers hold none of it.
_UNTIDY = re.compile(r"[\r\t\u3000]|  | \n|\n\n\n")

# A sentence ends at a CJK or ASCII end mark (with the closing quotes after
# it), an ASCII full stop followed by white space, or a line break.
_SENTENCE_END = re.compile(r"[。！？!?]+[”’」』）)\"']*|\.(?=\s)|\n+")
# What may come before a sentence proper: white space, a list marker, a bold
# label ("1. **牛魔王**："); lead-ins are looked for after it.
_HEAD = re.compile(r"\s*(?:[-*•+]\s+|\d{1,3}[.、)]\s*|#{1,6}\s+)?(?:\*\*[^*\n]{1,40}\*\*\s*[:：]?\s*)?")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d{1,3}[.)、]|\[\d{1,3}\])\s*(.+?)\s*$")
_LINK = re.compile(r"\[([^\]]*)\]\(([^)]*)\)")
_INLINE_REFS = re.compile(r"[、,，;；]\s*")


def _tidy(text: str) -> str:
    if _UNTIDY.search(text) is None:
        return text.strip()
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _compile_all(patterns: Sequence[str], key: str) -> list[re.Pattern[str]]:
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            raise SettingsError(f"[conversations] {key}: bad regular expression {p!r}: {exc}") from None
    return compiled


# ---- a literal prefilter: most answers hold none of the words a rule needs

_EXACT_CAP = 64  # strings a part of a pattern may spell before it counts as "anything"


def _exact(items: Any) -> set[str] | None:
    """The strings a parsed sequence matches, when they are few; else None."""
    out = {""}
    for op, av in items:
        if op is _c.LITERAL:
            part: set[str] | None = {chr(av)}
        elif op is _c.AT:
            part = {""}  # ^, $, \b: zero width
        elif op is _c.IN:
            chars = [chr(v) for o, v in av if o is _c.LITERAL]
            part = set(chars) if len(chars) == len(av) and len(chars) <= 16 else None
        elif op is _c.SUBPATTERN:
            part = _exact(av[3])
        elif op is _c.BRANCH:
            alts = [_exact(alt) for alt in av[1]]
            part = None if any(x is None for x in alts) else set().union(*alts)  # type: ignore[arg-type]
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT) and av[1] == 1:
            inner = _exact(av[2])
            part = None if inner is None else (inner | {""} if av[0] == 0 else inner)
        else:
            part = None
        if part is None or len(out) * len(part) > _EXACT_CAP:
            return None
        out = {x + y for x in out for y in part}
    return out


def _factors(items: Any) -> list[set[str]]:
    """Sets of strings such that every match of a parsed sequence contains
    a string of each set (empty when nothing is certain)."""
    candidates: list[set[str]] = []
    run = {""}
    for op, av in items:
        part = _exact([(op, av)])
        if part is not None and len(run) * len(part) <= _EXACT_CAP:
            run = {x + y for x in run for y in part}
            continue
        candidates.append(run)
        run = {""}
        if part is not None:
            run = part
            continue
        if op is _c.SUBPATTERN:
            candidates.extend(_factors(av[3]))
        elif op is _c.BRANCH:
            # Each branch must give a set; their union is necessary.
            alts = [_best(_factors(alt)) for alt in av[1]]
            if all(alts):
                candidates.append(set().union(*alts))  # type: ignore[arg-type]
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT) and av[0] >= 1:
            candidates.extend(_factors(av[2]))
    candidates.append(run)
    return [c for c in candidates if c and min(map(len, c)) > 0]


def _best(sets: Sequence[set[str]]) -> set[str] | None:
    """The rarest-looking of necessary word sets: the longest shortest word,
    then the fewest words that short ("无法" rather than the six verbs after it)."""
    if not sets:
        return None
    return max(sets, key=lambda c: (min(map(len, c)), -sum(len(w) == min(map(len, c)) for w in c)))


def _trie(words: Sequence[str]) -> str:
    """A regex finding any of ``words`` (sorted), shaped as a trie: at each
    place in a text, only the words that start with its character are tried."""
    if "" in words:
        return ""  # a word ends here: the longer ones need not be looked for
    groups: dict[str, list[str]] = {}
    for w in words:
        groups.setdefault(w[0], []).append(w[1:])
    alts = [re.escape(ch) + _trie(tails) for ch, tails in groups.items()]
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


def _words_of(pattern: re.Pattern[str]) -> list[set[str]]:
    """The word sets every match of ``pattern`` needs, lower-cased."""
    try:
        sets = _factors(_parser.parse(pattern.pattern, pattern.flags))
    except Exception:  # noqa: BLE001 - CPython's own parser; any surprise means "no prefilter"
        return []
    return [{w.lower() for w in c} for c in sets]


class _Matcher:
    """Where in a text each of a list of patterns may match, with most of
    the work done by literal prefilters read from the patterns themselves:
    one trie-shaped search of the lower-cased text finds the words the
    patterns need, and a pattern is tried only on a piece of text that holds
    its rarest word (then on one that holds every word it needs)."""

    def __init__(self, patterns: Sequence[re.Pattern[str]]) -> None:
        self.patterns = list(patterns)
        words = [_words_of(p) for p in self.patterns]
        # Per pattern: one search per word set it needs (all must find).
        self._needs = [[re.compile(_trie(sorted(c))) for c in sets] for sets in words]
        best = [_best(sets) for sets in words]
        # Patterns that need no certain word are tried everywhere.
        self._always = [i for i, b in enumerate(best) if b is None]
        union = sorted(set().union(*(b for b in best if b)))
        self._any = re.compile(_trie(union)) if union else None
        # The trie finds the shortest of words that share a start: map each
        # word found to every pattern whose rarest word begins with it.
        self._by_word: dict[str, list[int]] = {}
        for i, b in enumerate(best):
            for w in b or ():
                shortest = min((u for u in union if w.startswith(u)), key=len)
                self._by_word.setdefault(shortest, []).append(i)

    def hits(self, low: str) -> list[tuple[int, str]]:
        """Where in ``low`` (a lower-cased text) a pattern may match: each
        place a needed word starts, with that word (:meth:`patterns_of` says
        whose); "" at 0 stands for the patterns that need no certain word."""
        found: list[tuple[int, str]] = [(0, "")] if self._always else []
        if self._any is None:
            return found
        pos = 0
        # Searched again from the next character, not after the match: a
        # word may start inside another.
        while (m := self._any.search(low, pos)) is not None:
            found.append((m.start(), m.group()))
            pos = m.start() + 1
        return found

    def patterns_of(self) -> dict[str, list[int]]:
        """Each word :meth:`hits` may report, and the indices of the patterns it stands for."""
        return {"": self._always, **self._by_word}

    def needs_met(self, index: int, low: str) -> bool:
        """Whether ``low`` holds every word pattern ``index`` needs."""
        return all(n.search(low) for n in self._needs[index])


def _sentences(text: str) -> list[str]:
    """``text`` cut after each sentence end; the pieces join back to ``text``."""
    out = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


def _ref_name(item: str) -> str:
    item = _LINK.sub(lambda m: m.group(1) or m.group(2), item)
    return item.replace("**", "").replace("`", "").strip(" \t*_：:")


def _take_references(text: str, headers: Sequence[re.Pattern[str]]) -> tuple[str, list[str]]:
    """``text`` without its references blocks (a header line matched by one
    of ``headers``, the items on the rest of its line and the list under it),
    and the references found. Text with no header is returned as is."""
    lines = text.split("\n")
    kept: list[str] = []
    refs: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = next((m for h in headers if (m := h.match(line))), None)
        if m is None:
            kept.append(line)
            i += 1
            continue
        rest = line[m.end():].strip()
        if rest:
            refs.extend(_INLINE_REFS.split(rest))
        i += 1
        # The list under the header, blank lines inside it included.
        while i < len(lines):
            item = _LIST_ITEM.match(lines[i])
            if item is not None:
                refs.append(item.group(1))
            elif lines[i].strip() and not rest and not refs:
                refs.append(lines[i].strip())  # one bare reference line
            elif lines[i].strip():
                break
            i += 1
    names = [n for n in (_ref_name(r) for r in refs) if n]
    return "\n".join(kept), names


def _note(changes: list[str], rule: str) -> None:
    if rule not in changes:
        changes.append(rule)


def compile_gate(cs: ConversationSettings) -> Gate:
    """Compile the answer gate once; the returned callable maps an answer to
    a :class:`GateResult` (see the module docstring for the rules).

    Raises :class:`SettingsError` naming the key when a pattern is not a
    valid regular expression."""
    prefixes = _compile_all(cs.strip_prefixes, "strip_prefixes")
    refusal = _compile_all(cs.refusal_patterns, "refusal_patterns")
    material = _compile_all(cs.material_patterns, "material_patterns")
    rewrites = _compile_all(cs.material_rewrites, "material_rewrites") if cs.material_talk == "rewrite" else []
    headers = _compile_all(cs.reference_headers, "reference_headers")
    min_chars, max_chars, share = cs.min_answer_chars, cs.max_answer_chars, cs.refusal_share
    # One trie-shaped search finds the words any rule needs (most answers
    # hold none); only the sentences holding them are tried, and only with
    # the patterns that need what was found there.
    rules = _Matcher([*prefixes, *rewrites, *refusal, *material, *headers])
    ends = list(accumulate(map(len, (prefixes, rewrites, refusal, material, headers))))
    base = [0, *ends[:-1]]  # where each group's patterns start in ``rules``
    LEAD, REWRITE, REFUSE, TALK, HEADER = range(5)  # noqa: N806 - the rule groups, in ``rules`` order

    # What a word found means: per rule group, the patterns (indices within
    # the group) that need it.
    tried: dict[str, tuple[frozenset[int], ...]] = {}
    for word, indices in rules.patterns_of().items():
        groups: list[set[int]] = [set() for _ in ends]
        for i in indices:
            g = bisect_right(ends, i)
            groups[g].add(i - base[g])
        tried[word] = tuple(map(frozenset, groups))

    def by_sentence(hits: list[tuple[int, str]], starts: Sequence[int]) -> dict[int, list[set[int]]]:
        """Sentence index -> per rule group, the indices (within the group) of patterns to try."""
        out: dict[int, list[set[int]]] = {}
        for pos, word in hits:
            groups = out.setdefault(bisect_right(starts, pos) - 1, [set(), set(), set(), set(), set()])
            for g, indices in enumerate(tried[word]):
                if indices:
                    groups[g] |= indices
        return out

    def sentence_pass(
        text: str, low: str, hits: list[tuple[int, str]], changes: list[str]
    ) -> tuple[str, str | None]:
        pieces = _sentences(text)
        if len(low) != len(text):  # lower case changed the length ("İ"): look everywhere
            hits = [(0, word) for word in tried]
        todo = by_sentence(hits, list(accumulate((len(p) for p in pieces[:-1]), initial=0)))
        kept: list[str] = []
        refusing = 0  # characters of refusal sentences
        opening_refuses: bool | None = None
        talk = False
        for i, sentence in enumerate(pieces):
            groups = todo.get(i)
            if groups is not None and (groups[LEAD] or groups[REWRITE]):
                # A lead-in is looked for where a sentence starts, which is
                # where a pattern's "^" matches once the sentence stands alone.
                sentence = _edit(sentence, changes, [prefixes[j] for j in sorted(groups[LEAD])],
                                 [rewrites[j] for j in sorted(groups[REWRITE])])
            kept.append(sentence)
            words = sentence.strip()
            if not words:
                continue
            refuses = False
            if groups is not None and (groups[REFUSE] or groups[TALK]):
                w_low = words.lower()
                refuses = any(rules.needs_met(base[REFUSE] + j, w_low) and refusal[j].search(words)
                              for j in groups[REFUSE])
                talk = talk or any(rules.needs_met(base[TALK] + j, w_low) and material[j].search(words)
                                   for j in groups[TALK])
            if opening_refuses is None:
                opening_refuses = refuses
            if refuses:
                refusing += len(words)
        out = _tidy("".join(kept))
        if opening_refuses or (out and refusing >= share * len(out)):
            return out, "refusal"
        if talk:
            return out, "material_talk"
        return out, None

    def gate(answer: str) -> GateResult:
        raw = answer or ""
        text, cleaned = clean_text(raw)
        changes: list[str] = ["cleaned"] if cleaned else []
        text = _tidy(text)
        if not text:
            return GateResult("", "empty", (), tuple(changes))
        if any(m in text for m in TEMPLATE_MARKERS):
            return GateResult(text, "template_marker", (), tuple(changes))
        if len(text) > max_chars:
            return GateResult(text, "too_long", (), tuple(changes))
        refs: list[str] = []
        reason = None
        low = text.lower()
        hits = rules.hits(low)
        if hits:
            if any(tried[word][HEADER] for _, word in hits):
                stripped, refs = _take_references(text, headers)
                if stripped != text:
                    text = _tidy(stripped)
                    low = text.lower()
                    hits = rules.hits(low)
                    changes.append("references")
            text, reason = sentence_pass(text, low, hits, changes)
        if reason is None and not text:
            reason = "empty"
        if reason is None and len(text) < min_chars:
            reason = "too_short"
        return GateResult(text, reason, tuple(dict.fromkeys(refs)), tuple(changes))

    return gate


def _edit(
    sentence: str, changes: list[str], prefixes: Sequence[re.Pattern[str]], rewrites: Sequence[re.Pattern[str]]
) -> str:
    """One sentence without its lead-ins and its safe material talk; a
    sentence that was nothing else keeps only its list marker and line break."""
    head = _HEAD.match(sentence).end()  # type: ignore[union-attr]
    lead, body = sentence[:head], sentence[head:]
    original = body
    changed = True
    while changed and body:  # lead-ins may be stacked: "根据资料，材料中提到，"
        changed = False
        for p in prefixes:
            stripped = p.sub("", body, count=1).lstrip(" \t")
            if stripped != body:
                body, changed = stripped, True
                _note(changes, "lead_in")
    for p in rewrites:
        rewritten = p.sub("", body)
        if rewritten != body:
            body = rewritten
            _note(changes, "material_rewritten")
    if body is original:
        return sentence
    if not body.strip():
        return (lead if lead.strip() else "") + sentence[len(sentence.rstrip("\n")):]
    if body[0].isascii() and body[0].islower():
        body = body[0].upper() + body[1:]  # "Based on the context, the game" -> "The game"
    return lead + body


