"""Questions: the pure half of the question stage.

Prompts for the question writer, a safe parser for the lists models return,
screening, normalisation and stable ids, a near-duplicate filter that stays
small at scale, and the follow-up helpers of multi-turn conversations.
Nothing here does I/O or awaits; the graph calls these functions.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import re
import unicodedata
import zlib
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from pipeline.presets import PRESETS
from pipeline.settings import ConversationSettings, QuestionSettings

__all__ = [
    "TEMPLATE_MARKERS",
    "Deduper",
    "ensure_topic",
    "fill_template",
    "followup_messages",
    "normalise",
    "parse_followup",
    "parse_question_list",
    "question_id",
    "question_messages",
    "screen_question",
]

# Chat-template markers that must never reach a training record: XTuner would
# render them as real turn boundaries.
TEMPLATE_MARKERS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


# --------------------------------------------------------------------------- prompts

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill_template(template: str, values: dict[str, str]) -> str:
    """Replace ``{name}`` for the names in ``values``; ``{{``/``}}`` become
    ``{``/``}`` as in :meth:`str.format`. Anything else (a JSON example, an
    unknown ``{x}``) is left as written, so a user prompt with literal braces
    cannot crash a run hours in."""

    def sub(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        name = m.group(1)
        return values[name] if name in values else tok

    return _PLACEHOLDER.sub(sub, template)


def question_messages(
    qs: QuestionSettings, aspect: str, n: int, accepted_sample: Sequence[str] = ()
) -> list[dict[str, str]]:
    """Chat messages asking the question writer for ``n`` questions on ``aspect``.

    With ``accepted_sample`` (questions already accepted for this aspect), the
    preset's "ask different ones" text is appended so later batches of a large
    ``per_aspect`` do not repeat earlier ones."""
    preset = PRESETS[qs.language]
    values = {"topic": qs.topic, "aspect": aspect, "n": str(n)}
    system = fill_template(qs.system_prompt or preset.question_system, values)
    user = fill_template(qs.user_prompt or preset.question_user, values)
    if accepted_sample:
        examples = "\n".join(f"- {q}" for q in accepted_sample)
        user = f"{user}\n{fill_template(preset.avoid, {**values, 'examples': examples})}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def followup_messages(
    cs: ConversationSettings, topic: str, question: str, answer: str
) -> list[dict[str, str]]:
    """Chat messages asking for one follow-up to ``question``/``answer``."""
    template = cs.followup_prompt or PRESETS["zh"].followup
    content = fill_template(template, {"topic": topic, "question": question, "answer": answer})
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------- parsing

_OPEN_BRACKETS = "[［【"
_CLOSE_OF = {"[": "]", "［": "］", "【": "】"}
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』", "`": "`"}
# Numbering and bullets a model puts before an item: "1.", "1、", "1)", "（1）",
# "(1)", "Q1:", "问题1：", "第1个：", "一、", "-", "*", "•", "·".
_MARKER = re.compile(
    r"""^\s*(?:
        [-*•·●▪◦+]\s*(?:[0-9０-９]+\s*[.．、)）:：]\s*)?
      | [(（]\s*[0-9０-９]+\s*[)）]\s*
      | [0-9０-９]+\s*(?:[.．](?![0-9０-９])|[、)）:：])\s*
      | [QqＱ]\s*[0-9０-９]+\s*[.．:：、)）]?\s*
      | 问题\s*[0-9０-９]+\s*[.．:：、)）]?\s*
      | 第\s*[0-9０-９一二三四五六七八九十]+\s*[个題题]?\s*[.．:：、)）]\s*
      | [一二三四五六七八九十]+\s*[、.．]\s*
    )""",
    re.X,
)
_QUOTED = re.compile(
    r'"((?:[^"\\\n]|\\.)*)"|\'((?:[^\'\\\n]|\\.)*)\'|“([^”\n]*)”|‘([^’\n]*)’|「([^」\n]*)」|『([^』\n]*)』'
)
_SEPARATORS_ONLY = re.compile(r"[\s,，、;；]*")
_QUESTION_SPLIT = re.compile(r"(?<=[?？])\s*[\"'”’」』]?\s*[,，、;；]?\s*[\"'“‘「『]?\s*")
_DICT_KEYS = ("question", "q", "text", "content", "问题", "query")


def _items_from_value(value: Any) -> list[str]:
    """Strings out of a parsed list: plain strings, ``{"question": ...}``
    dicts, and one level of nesting."""
    if isinstance(value, dict):
        for v in value.values():
            if isinstance(v, list):
                return _items_from_value(v)
        return []
    if not isinstance(value, (list, tuple)):
        return []
    out: list[str] = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            lowered = {str(k).lower(): v for k, v in item.items()}
            picked = next(
                (lowered[k] for k in _DICT_KEYS if isinstance(lowered.get(k), str)),
                next((v for v in item.values() if isinstance(v, str)), None),
            )
            if picked is not None:
                out.append(picked)
        elif isinstance(item, (list, tuple)):
            out.extend(x for x in item if isinstance(x, str))
    return out


def _matching_close(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``start`` (-1 when none);
    brackets inside quotes do not count."""
    opener = text[start]
    closer = _CLOSE_OF[opener]
    depth = 0
    quote: str | None = None
    i = start
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == opener:
            depth += 1
        elif ch == closer:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _parse_bracketed(text: str) -> list[str] | None:
    """The first bracketed list in ``text`` that parses as JSON, a Python
    literal, or a run of quoted items separated only by commas; ``[]`` when
    lists parsed but held no strings, None when nothing parsed."""
    decoder = json.JSONDecoder()
    parsed_without_strings = False
    starts = [i for i, ch in enumerate(text) if ch in _OPEN_BRACKETS][:50]
    for start in starts:
        if text[start] == "[":
            try:
                value, _ = decoder.raw_decode(text, start)
            except ValueError:
                pass
            else:
                items = _items_from_value(value)
                if items:
                    return items
                parsed_without_strings = True
        end = _matching_close(text, start)
        if end < 0:
            end = max(text.rfind(c) for c in "]］】")
            if end <= start:
                continue
        inner = text[start + 1 : end]
        span = f"[{inner}]"
        for loader in (json.loads, ast.literal_eval):
            try:
                # literal_eval only ever sees the bracketed span, and only
                # builds literals; any failure just means "not this shape".
                value = loader(span)
            except Exception:  # noqa: BLE001
                continue
            items = _items_from_value(value)
            if items:
                return items
            parsed_without_strings = True
        items = _quoted_items(inner)
        if items:
            return items
    return [] if parsed_without_strings else None


def _quoted_items(inner: str) -> list[str] | None:
    """Quoted items when nothing but separators lies between them (so an
    apostrophe in "What's" cannot cut an item in two)."""
    items: list[str] = []
    pos = 0
    for m in _QUOTED.finditer(inner):
        if not _SEPARATORS_ONLY.fullmatch(inner, pos, m.start()):
            return None
        items.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    if not items or not _SEPARATORS_ONLY.fullmatch(inner, pos):
        return None
    return items


def _unquote(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and _QUOTE_PAIRS.get(s[0]) == s[-1]:
        s = s[1:-1].strip()
    return s


def _strip_lone_quotes(s: str) -> str:
    # A quote left over from a list cut apart by hand has no partner inside
    # the item; a quote that has one ("「天命人」是谁？") is part of the text.
    closers = set(_QUOTE_PAIRS.values())
    if s and s[0] in _QUOTE_PAIRS:
        close = _QUOTE_PAIRS[s[0]]
        if s[1:].count(close) % 2 == 0 if close == s[0] else close not in s[1:]:
            s = s[1:].lstrip()
    if s and s[-1] in closers:
        opens = [o for o, c in _QUOTE_PAIRS.items() if c == s[-1]]
        if all(s[:-1].count(o) % 2 == 0 if o == s[-1] else o not in s[:-1] for o in opens):
            s = s[:-1].rstrip()
    return s


def _clean_item(item: str) -> str:
    s = item.replace("**", "").replace("__", "").strip()
    s = _unquote(s)
    s = _MARKER.sub("", s, count=1)
    s = _unquote(s.strip().strip(",，;；").strip())
    return _strip_lone_quotes(s)


def _parse_lines(text: str) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("```")]
    marked = [ln for ln in lines if _MARKER.match(ln.replace("**", ""))]
    if marked:
        return [c for c in (_clean_item(ln) for ln in marked) if c]
    out: list[str] = []
    for ln in lines:
        if ln[-1] in ":：":
            continue  # "好的，以下是10个问题：" introduces a list, it is not one
        if ln[0] in _OPEN_BRACKETS:
            # A list that did not parse (often cut off at max_tokens): peel
            # the brackets and the outer quotes, the split below does the rest.
            ln = ln[1:-1] if ln[-1] in "]］】" else ln[1:]
            ln = ln.strip()
            if ln and ln[0] in _QUOTE_PAIRS:
                ln = ln[1:]
            if ln and ln[-1] in _QUOTE_PAIRS.values():
                ln = ln[:-1]
            if not ln:
                continue
        pieces = [p for p in _QUESTION_SPLIT.split(ln) if p.strip()]
        out.extend(pieces if any(c in ln for c in "?？") else [ln])
    # With no list structure at all, keep only what reads as a question;
    # lines like "希望对你有帮助！" are chat, not items.
    questions = [c for c in (_clean_item(p) for p in out) if c and c[-1] in "?？"]
    if questions:
        return questions
    return [c for c in (_clean_item(p) for p in out) if c]


def parse_question_list(text: str) -> list[str]:
    """Questions out of a model's reply, in order, never with ``eval``.

    Accepts a JSON list (of strings or of ``{"question": ...}`` objects), a
    Python-style list (``ast.literal_eval`` on the bracketed span only),
    full-width brackets and quotes, fenced code, chatty text around the list,
    numbered or bulleted lines, or one line of several questions. Numbering,
    bullets and surrounding quotes are stripped; nothing is invented."""
    if not text or not text.strip():
        return []
    fenced = _FENCE.findall(text)
    body = "\n".join(fenced) if fenced else text
    items = _parse_bracketed(body)
    if items is None:
        return _parse_lines(body)
    if not items:
        # Only lists without strings ("[1]" in a preamble, "[]"): take lines
        # that are questions, nothing else.
        return [q for q in _parse_lines(body) if q[-1] in "?？"]
    return [c for c in (_clean_item(i) for i in items) if c]


# --------------------------------------------------------------------------- screening

_ZH_INTERROGATIVE = re.compile(
    r"什么|如何|怎么|怎样|为什么|为何|哪|谁|几|多少|是否|吗|呢|何时|何处|何种|有何|能否|可否|介绍"
)
_EN_INTERROGATIVE = re.compile(
    r"^\s*(what|how|why|who|whom|whose|which|when|where|is|are|was|were|does|do|did|"
    r"can|could|should|would|will|has|have|in what|in which)\b",
    re.I,
)


def screen_question(q: str, qs: QuestionSettings) -> str | None:
    """Why ``q`` is not an acceptable question, as a short stable code
    ("empty", "template_marker", "too_short", "too_long", "not_a_question"),
    or None when it is fine."""
    s = q.strip()
    if not s:
        return "empty"
    if any(m in s for m in TEMPLATE_MARKERS):
        return "template_marker"
    if len(s) < qs.min_chars:
        return "too_short"
    if len(s) > qs.max_chars:
        return "too_long"
    if "?" not in s and "？" not in s and not (
        _ZH_INTERROGATIVE.search(s) or _EN_INTERROGATIVE.match(s)
    ):
        return "not_a_question"
    return None


# --------------------------------------------------------------------------- identity

_NOT_WORD = re.compile(r"[\W_]+")


def normalise(q: str) -> str:
    """Canonical text for exact dedup and ids: NFKC (full width to half
    width), case-folded, with spaces, punctuation and symbols removed."""
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", q).casefold())


def question_id(q: str) -> str:
    """Stable 16-hex-digit id of a question: the same after a change of
    width, case, spacing or punctuation, the same in every process."""
    return hashlib.blake2b(normalise(q).encode("utf-8"), digest_size=8).hexdigest()


# --------------------------------------------------------------------------- dedup

def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, element-wise (uint32, wrapping): the
    pre-mix datasketch's "affine32" scheme applies to every input hash."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class _IntTable:
    """64-bit key -> indexes, with open addressing in two flat arrays: 12
    bytes a slot at a load of at most one half, against ~75 bytes for an
    entry of a Python dict keyed by ints. Each key has one slot; a key that
    gains a second value moves its values to a small dict of lists (rare:
    only questions sharing a whole band meet there), which stops growing at
    ``max_per_key`` so a band made of very common n-grams cannot turn every
    lookup into hundreds of comparisons. Key 0 marks an empty slot."""

    __slots__ = ("_keys", "_vals", "_mask", "_size", "_multi", "max_per_key")

    def __init__(self, capacity: int = 1024, max_per_key: int = 32) -> None:
        self._keys = array("Q", bytes(8 * capacity))
        self._vals = array("i", bytes(4 * capacity))
        self._mask = capacity - 1
        self._size = 0
        self._multi: dict[int, list[int]] = {}
        self.max_per_key = max_per_key

    def __len__(self) -> int:
        return self._size

    def _slot(self, key: int) -> int:
        keys, mask = self._keys, self._mask
        i = key & mask
        while (k := keys[i]) != 0 and k != key:
            i = (i + 1) & mask
        return i

    def get(self, key: int) -> Sequence[int]:
        i = self._slot(key)
        if self._keys[i] == 0:
            return ()
        v = self._vals[i]
        return self._multi[key] if v < 0 else (v,)

    def __contains__(self, key: int) -> bool:
        return self._keys[self._slot(key)] != 0

    def add(self, key: int, value: int) -> None:
        i = self._slot(key)
        if self._keys[i] != 0:
            v = self._vals[i]
            if v >= 0:
                self._multi[key] = [v, value]
                self._vals[i] = -1
            elif len(bucket := self._multi[key]) < self.max_per_key:
                bucket.append(value)
            return
        if 2 * (self._size + 1) > len(self._keys):
            self._grow()
            i = self._slot(key)
        self._keys[i] = key
        self._vals[i] = value
        self._size += 1

    def _grow(self) -> None:
        old_keys, old_vals = self._keys, self._vals
        cap = 2 * len(old_keys)
        self._keys = keys = array("Q", bytes(8 * cap))
        self._vals = vals = array("i", bytes(4 * cap))
        self._mask = mask = cap - 1
        for k, v in zip(old_keys, old_vals):
            if k:
                i = k & mask
                while keys[i] != 0:
                    i = (i + 1) & mask
                keys[i] = k
                vals[i] = v


def _key64(data: bytes, salt: int = 0) -> int:
    # A real mixing hash: band values often share their leading words, and a
    # cheap reduction left them sharing low bits too, i.e. probe runs of
    # thousands of slots.
    key = int.from_bytes(
        hashlib.blake2b(data, digest_size=8, person=salt.to_bytes(4, "little")).digest(), "little"
    )
    return key or 1


class Deduper:
    """Rejects exact duplicates (after :func:`normalise`) and near duplicates
    (character 3-gram Jaccard similarity >= ``threshold``) of accepted questions.

    Candidates come from MinHash signatures (datasketch) cut into bands; a
    candidate is confirmed by the exact Jaccard of the two 3-gram sets, so the
    bands are tuned for recall at the threshold (32 permutations in 8 bands of
    4 find a pair at Jaccard 0.7 with p ~ 0.89, at 0.8 with p ~ 0.99) while
    unrelated questions rarely meet in a bucket. Per question this keeps a
    64-bit digest, one slot per band, and the 3-gram hashes (4 bytes each) in
    one flat array: a few hundred bytes. datasketch's ``MinHashLSH`` keeps a
    Python set per bucket, over 1 KB per question, hence the own index.
    Questions shorter than 3 characters after normalising get the exact check
    only.
    """

    NGRAM = 3

    def __init__(
        self, threshold: float = 0.7, *, num_perm: int = 32, bands: int = 8, seed: int = 1
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if bands < 1 or num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands = bands
        self._band_bytes = 4 * (num_perm // bands)
        self._seed = seed
        self._perms: tuple[np.ndarray, np.ndarray] | None = None  # see _permutations
        self._exact = _IntTable()
        self._buckets = _IntTable()
        self._grams = array("I")
        self._offsets = array("Q", [0])
        self.accepted = 0
        self.rejected: dict[str, int] = {"duplicate": 0, "near_duplicate": 0}

    def __len__(self) -> int:
        """How many distinct questions are remembered (seeded ones included)."""
        return len(self._exact)

    def _gram_hashes(self, norm: str) -> list[int]:
        n = self.NGRAM
        return sorted({zlib.crc32(norm[i : i + n].encode("utf-8")) for i in range(len(norm) - n + 1)})

    def _permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """datasketch's "affine32" permutations, so signatures stay those of
        that scheme; they are applied in :meth:`_signatures`, many questions at
        a time. Drawn on first use: importing datasketch (it pulls in scipy)
        took ~0.3 s of every start, and a resumed run with all its questions
        accepted never needs it."""
        if self._perms is None:
            from datasketch import MinHash

            a, b = MinHash(num_perm=self.num_perm, seed=self._seed, scheme="affine32").permutations
            self._perms = (np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32))
        return self._perms

    def _signatures(self, grams: Sequence[list[int]]) -> np.ndarray:
        """MinHash signatures of many gram lists at once, shape (len(grams),
        num_perm), uint32: the same values datasketch's "affine32" scheme
        gives (MurmurHash3 fmix32 pre-mix, then ``a * h + b`` wrapping at
        2^32), without building a MinHash object per question. Every list
        must be non-empty."""
        lengths = np.fromiter((len(g) for g in grams), dtype=np.int64, count=len(grams))
        flat = np.fromiter(itertools.chain.from_iterable(grams), dtype=np.uint32, count=int(lengths.sum()))
        h = _fmix32(flat)
        a, b = self._permutations()
        phv = h[:, None] * a + b  # uint32 arithmetic: the wraparound is the modulo
        starts = np.zeros(len(grams), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return np.minimum.reduceat(phv, starts, axis=0)

    def _band_keys_of(self, signature: np.ndarray) -> list[int]:
        raw = signature.astype("<u4", copy=False).tobytes()
        w = self._band_bytes
        return [_key64(raw[b * w : (b + 1) * w], b + 1) for b in range(self.bands)]

    def _band_keys(self, grams: list[int]) -> list[int]:
        return self._band_keys_of(self._signatures([grams])[0])

    def _near(self, grams: list[int], keys: list[int]) -> bool:
        mine = set(grams)
        seen: set[int] = set()
        offsets = self._offsets
        for key in keys:
            for idx in self._buckets.get(key):
                if idx in seen:
                    continue
                seen.add(idx)
                other = set(self._grams[offsets[idx] : offsets[idx + 1]])
                inter = len(mine & other)
                if inter and inter >= self.threshold * (len(mine) + len(other) - inter):
                    return True
        return False

    def _insert(self, grams: list[int], keys: list[int]) -> None:
        idx = len(self._offsets) - 1
        self._grams.extend(grams)
        self._offsets.append(len(self._grams))
        for key in keys:
            self._buckets.add(key, idx)

    def _check_many(self, questions: Iterable[str], *, count: bool) -> list[str | None]:
        """Check-and-remember each question in order, as if one at a time:
        a question is checked against the ones before it in the same call.
        The MinHash signatures of the whole call are computed in one numpy
        pass, which is where a per-question MinHash object spent its time."""
        norms = [normalise(q) for q in questions]
        digests = [_key64(norm.encode("utf-8")) for norm in norms]
        n = self.NGRAM
        grams: list[list[int] | None] = [None] * len(norms)
        exact = self._exact
        batch_seen: set[int] = set()
        for i, (norm, digest) in enumerate(zip(norms, digests)):
            # No signature for a certain exact duplicate (of the index or of an
            # earlier question of this call) nor for a text too short for 3-grams.
            if len(norm) >= n and digest not in batch_seen and digest not in exact:
                grams[i] = self._gram_hashes(norm)
            batch_seen.add(digest)
        wanted = [i for i, g in enumerate(grams) if g is not None]
        sigs = self._signatures([grams[i] for i in wanted]) if wanted else None  # type: ignore[misc]
        row_of = {i: r for r, i in enumerate(wanted)}
        reasons: list[str | None] = []
        for i, digest in enumerate(digests):
            reason: str | None = None
            if digest in exact:
                reason = "duplicate"
            elif len(norms[i]) >= n:
                g = grams[i]
                if g is None:
                    # Same text as an earlier question of this call that was
                    # rejected: rare, and checked on its own like any other.
                    g = self._gram_hashes(norms[i])
                    keys = self._band_keys(g)
                else:
                    assert sigs is not None
                    keys = self._band_keys_of(sigs[row_of[i]])
                if self._near(g, keys):
                    reason = "near_duplicate"
                else:
                    self._insert(g, keys)
            if reason is None:
                exact.add(digest, 0)
                if count:
                    self.accepted += 1
            elif count:
                self.rejected[reason] += 1
            reasons.append(reason)
        return reasons

    def add(self, q: str) -> str | None:
        """Accept ``q`` (None) or say why not: "duplicate" or "near_duplicate"."""
        return self._check_many((q,), count=True)[0]

    def add_many(self, questions: Iterable[str]) -> list[str | None]:
        """:meth:`add` for each question in order (each one is checked against
        the questions before it, in the index and in ``questions``), with the
        signatures of all of them computed at once."""
        return self._check_many(questions, count=True)

    def seed(self, questions: Iterable[str], *, chunk: int = 4096) -> None:
        """Remember questions accepted by an earlier run, without counting them.
        Works through ``questions`` ``chunk`` at a time, so an iterator over a
        large ledger is never held whole."""
        it = iter(questions)
        while batch := list(itertools.islice(it, chunk)):
            self._check_many(batch, count=False)


# --------------------------------------------------------------------------- follow-ups

_FOLLOWUP_LABEL = re.compile(
    r"^\s*(?:追问|后续问题|问题|提问|follow[- ]?up(?: question)?|question)\s*[:：]\s*", re.I
)


def parse_followup(text: str) -> str:
    """The follow-up question in a model's reply: the first line that reads
    as a question, with labels ("追问："), numbering and quotes stripped;
    "" when there is none."""
    if not text:
        return ""
    fenced = _FENCE.findall(text)
    body = "\n".join(fenced) if fenced else text
    candidates: list[str] = []
    for line in body.splitlines():
        s = line.replace("**", "").strip()
        if not s or s.startswith("```"):
            continue
        s = _MARKER.sub("", s, count=1)
        s = _FOLLOWUP_LABEL.sub("", s)
        s = _clean_item(s)
        if s:
            candidates.append(s)
    for s in candidates:
        if "?" in s or "？" in s or _ZH_INTERROGATIVE.search(s) or _EN_INTERROGATIVE.match(s):
            return s
    return ""


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def ensure_topic(question: str, topic: str) -> str:
    """``question`` naming ``topic``: HuixiangDou keeps no history, so a
    follow-up such as "他的师父是谁？" must carry its subject. Matching ignores
    case, width, spaces, punctuation and 《》; when missing, the topic is
    prefixed ("《黑神话：悟空》中，…" or "In Black Myth: Wukong, …")."""
    question = question.strip()
    bare = topic.strip().strip("《》").strip()
    if not bare or not question:
        return question
    if normalise(bare) in normalise(question):
        return question
    if _CJK.search(bare) or _CJK.search(question):
        return f"《{bare}》中，{question}"
    first, _, rest = question.partition(" ")
    if _EN_INTERROGATIVE.match(first):
        question = first.lower() + (" " + rest if rest else "")
    return f"In {bare}, {question}"
