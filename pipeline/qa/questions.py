"""Questions: the pure half of the question stage.

Prompts for the question writer, a safe parser for the lists models return,
screening, normalisation and stable ids, a near-duplicate filter that stays
small at scale, and the follow-up helpers of multi-turn conversations.
Nothing here does I/O or awaits; the graph calls these functions.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import itertools
import json
import re
import unicodedata
from collections.abc import Sequence
from typing import Any


from pipeline.presets import PRESETS
from pipeline.settings import ConversationSettings, QuestionSettings

__all__ = [
    "TEMPLATE_MARKERS",
    "fill_template",
    "followup_messages",
    "normalise",
    "followup_candidates",
    "parse_question_list",
    "passage_messages",
    "question_id",
    "question_length",
    "question_messages",
    "screen_question",
    "screen_standalone",
    "standalone_question",
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
    The prompts are the settings' (the loader fills those left empty from the
    language preset, :func:`pipeline.settings.parse_settings`).

    With ``accepted_sample`` (questions already accepted for this aspect), the
    preset's "ask different ones" text is appended so later batches of a large
    ``per_aspect`` do not repeat earlier ones."""
    values = {"topic": qs.topic, "aspect": aspect, "n": str(n)}
    system = fill_template(qs.system_prompt, values)
    user = fill_template(qs.user_prompt, values)
    if accepted_sample:
        examples = "\n".join(f"- {q}" for q in accepted_sample)
        user = f"{user}\n{fill_template(PRESETS[qs.language].avoid, {**values, 'examples': examples})}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def passage_messages(
    qs: QuestionSettings, passage: str, file: str, n: int
) -> list[dict[str, str]]:
    """Chat messages asking the question writer for at most ``n`` questions
    that ``passage`` (from ``file``, relative to ``data_dir``) answers; the
    prompts are the settings' (see :func:`question_messages`)."""
    values = {"topic": qs.topic, "n": str(n), "file": file}
    system = fill_template(qs.passage_system_prompt, values)
    user = fill_template(qs.passage_user_prompt, {**values, "passage": passage})
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def followup_messages(
    cs: ConversationSettings, topic: str, question: str, answer: str
) -> list[dict[str, str]]:
    """Chat messages asking for one follow-up to ``question``/``answer``,
    with the settings' prompt (see :func:`question_messages`)."""
    content = fill_template(cs.followup_prompt, {"topic": topic, "question": question, "answer": answer})
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------- parsing

_OPEN_BRACKETS = "[［【"
_OPEN_BRACKET = re.compile(r"[\[［【]")
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
# A Python string literal without prefix, escapes or line breaks.
_PLAIN_QUOTED = re.compile(r"""(['"])((?:(?!\1)[^\\\n\r])*)\1""")
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


# The only characters _matching_close looks at: the scan jumps between them.
_BRACKET_EVENT = re.compile(r"""[\\"'\[\]［］【】]""")


def _matching_close(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``start`` (-1 when none);
    brackets inside quotes do not count, nor a character after a backslash
    inside quotes."""
    opener = text[start]
    closer = _CLOSE_OF[opener]
    depth = 0
    quote: str | None = None
    escaped = -1  # index of a character a backslash took out of play
    for m in _BRACKET_EVENT.finditer(text, start):
        i, ch = m.start(), m.group()
        if i == escaped:
            continue
        if quote is not None:
            if ch == "\\":
                escaped = i + 1
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
    return -1


def _parse_bracketed(text: str) -> list[str] | None:
    """The first bracketed list in ``text`` that parses as JSON, a Python
    literal, or a run of quoted items separated only by commas; ``[]`` when
    lists parsed but held no strings, None when nothing parsed."""
    decoder = json.JSONDecoder()
    parsed_without_strings = False
    starts = [m.start() for m in itertools.islice(_OPEN_BRACKET.finditer(text), 50)]
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
        for loader in (json.loads, _plain_quoted_items, ast.literal_eval):
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


def _plain_quoted_items(span: str) -> list[str]:
    """What ``ast.literal_eval`` gives for ``span`` when it is a list of
    quoted strings without backslashes, each pair parted by a comma, without
    compiling anything (compiling was most of the cost of parsing a
    Python-style list). Raises ValueError for anything else, so
    ``literal_eval`` still judges every other shape."""
    inner = span[1:-1]
    if "\\" in inner or "\0" in inner:
        raise ValueError("escapes or NUL: left to literal_eval")
    items: list[str] = []
    pos = 0
    for m in _PLAIN_QUOTED.finditer(inner):
        gap = inner[pos : m.start()]
        if gap.strip() != ("," if items else ""):
            raise ValueError("not a plain list of quoted strings")
        items.append(m.group(2))
        pos = m.end()
    if not items or inner[pos:].strip() not in ("", ","):
        raise ValueError("not a plain list of quoted strings")
    return items


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


def _unfenced(text: str) -> str:
    """The contents of a reply's fenced code blocks, joined; the reply itself when it has none."""
    fenced = _FENCE.findall(text)
    return "\n".join(fenced) if fenced else text


def parse_question_list(text: str) -> list[str]:
    """Questions out of a model's reply, in order, never with ``eval``.

    Accepts a JSON list (of strings or of ``{"question": ...}`` objects), a
    Python-style list (``ast.literal_eval`` on the bracketed span only),
    full-width brackets and quotes, fenced code, chatty text around the list,
    numbered or bulleted lines, or one line of several questions. Numbering,
    bullets and surrounding quotes are stripped; nothing is invented."""
    if not text or not text.strip():
        return []
    body = _unfenced(text)
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


_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_ANY = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


def question_length(q: str, unit: str) -> int:
    """Length of ``q`` in ``unit``: "words" (space-separated) or "chars"."""
    return len(q.split()) if unit == "words" else len(q.strip())


def _in_script(s: str, script: str) -> bool:
    if script == "han":  # Chinese: Han characters, and no Japanese kana
        return _HAN.search(s) is not None and _KANA.search(s) is None
    return len(_CJK_ANY.findall(s)) <= len(_LATIN.findall(s))


def screen_question(q: str, qs: QuestionSettings) -> str | None:
    """Why ``q`` is not an acceptable question, as a short stable code
    ("empty", "template_marker", "wrong_language", "too_short", "too_long",
    "not_a_question"), or None when it is fine.

    Length is measured as ``[questions] language`` is written (its preset's
    ``length_unit``): characters against ``min_chars``/``max_chars``, or words
    against ``min_words``/``max_words``; the script must be the language's."""
    s = q.strip()
    if not s:
        return "empty"
    if any(m in s for m in TEMPLATE_MARKERS):
        return "template_marker"
    preset = PRESETS[qs.language]
    if not _in_script(s, preset.script):
        return "wrong_language"
    unit = preset.length_unit
    length = question_length(s, unit)
    low, high = (qs.min_words, qs.max_words) if unit == "words" else (qs.min_chars, qs.max_chars)
    if length < low:
        return "too_short"
    if length > high:
        return "too_long"
    if "?" not in s and "？" not in s and not (
        _ZH_INTERROGATIVE.search(s) or _EN_INTERROGATIVE.match(s)
    ):
        return "not_a_question"
    return None


# A question that leans on the text it was written from ("what does this
# passage say about...") means nothing to a user of the trained model, nor to
# a RAG backend that never saw that text.
_LEANS_ON_SOURCE = re.compile(
    r"(这|该|本|此|上述|上|下)(一)?(段|篇|则|份)?(资料|材料|文本|文章|段落|段话|文字)|文中|上文|下文|本文"
    r"|\b(th(is|e|at) (passage|text|excerpt|article|paragraph|material)|the above)\b",
    re.I,
)


def screen_standalone(q: str) -> str | None:
    """``"not_standalone"`` when a question written from a passage refers to
    that passage ("这段资料", "文中", "the text") instead of naming its
    subject; None when it stands on its own."""
    return "not_standalone" if _LEANS_ON_SOURCE.search(q) else None


# --------------------------------------------------------------------------- identity

_NOT_WORD = re.compile(r"[\W_]+")
# Full-width punctuation common in Chinese questions, and its NFKC form.
# One such character makes NFKC take its slow path over the whole text;
# replaced first, most questions are already normalised and NFKC returns at
# once. Replacing a character by its compatibility decomposition does not
# change a text's NFKC form (NFKD decomposes every character the same way).
_FULL_WIDTH = (("？", "?"), ("：", ":"), ("，", ","), ("（", "("), ("）", ")"), ("！", "!"))


@functools.lru_cache(maxsize=4096)
def normalise(q: str) -> str:
    """Canonical text for exact dedup and ids: NFKC (full width to half
    width), case-folded, with spaces, punctuation and symbols removed.

    Cached (pure, and small): the Deduper and :func:`question_id` each
    normalise every accepted question, one right after the other."""
    for wide, narrow in _FULL_WIDTH:
        if wide in q:
            q = q.replace(wide, narrow)
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", q).casefold())


def question_id(q: str) -> str:
    """Stable 16-hex-digit id of a question: the same after a change of
    width, case, spacing or punctuation, the same in every process."""
    return hashlib.blake2b(normalise(q).encode("utf-8"), digest_size=8).hexdigest()


# --------------------------------------------------------------------------- follow-ups

_FOLLOWUP_LABEL = re.compile(
    r"^\s*(?:追问|后续问题|问题|提问|follow[- ]?up(?: question)?|question)\s*[:：]\s*", re.I
)
_FOLLOWUP_KEYS = ("follow_up", "followup", "follow-up", "follow_up_question", "追问", *_DICT_KEYS)


def _reads_as_question(s: str) -> bool:
    return "?" in s or "？" in s or bool(_ZH_INTERROGATIVE.search(s) or _EN_INTERROGATIVE.match(s))


def _object_items(body: str) -> list[str] | None:
    """The strings of a JSON object reply (``{"question": "..."}``), the
    question-like keys first; None when ``body`` is no JSON object."""
    start = body.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(body, start)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    lowered = {str(k).lower(): v for k, v in value.items()}
    keyed = [lowered[k] for k in _FOLLOWUP_KEYS if k in lowered]
    rest = [v for k, v in lowered.items() if k not in _FOLLOWUP_KEYS]
    out: list[str] = []
    for v in (*keyed, *rest):
        if isinstance(v, str):
            out.append(v)
        else:
            out.extend(_items_from_value(v if isinstance(v, list) else [v]))
    return out


def followup_candidates(text: str) -> list[str]:
    """The follow-up questions a model's reply offers, in order, parsed like
    a question list: a JSON object (``{"question": ...}``), a JSON or Python
    list, fenced code, labelled lines ("追问：", "Follow-up question:"),
    numbered lines, or plain text. Labels, numbering and quotes are stripped;
    only items that read as questions are kept. The caller takes the first
    that passes screening and deduplication; ``[]`` when there is none."""
    if not text or not text.strip():
        return []
    body = _unfenced(text)
    items = _object_items(body)
    if items is None:
        unlabelled = "\n".join(_FOLLOWUP_LABEL.sub("", ln.replace("**", "")) for ln in body.splitlines())
        items = parse_question_list(unlabelled)
    cleaned = (_clean_item(_FOLLOWUP_LABEL.sub("", _clean_item(i))) for i in items)
    return [c for c in cleaned if c and _reads_as_question(c)]


def standalone_question(question: str, topic: str, language: str) -> str:
    """The text a backend without conversation history (HuixiangDou) is sent
    for a follow-up ``question``: the question itself when it names
    ``topic`` (ignoring case, width, spaces, punctuation and 《》), else the
    language preset's ``standalone`` lead-in ("关于《黑神话：悟空》，石猴的师父是谁？",
    "About home brewing: Which yeast suits a stout?"). The question keeps its
    own wording: the dataset stores it as asked, and the follow-up prompt asks
    for one that names its subject."""
    question = question.strip()
    bare = topic.strip().strip("《》").strip()
    if not bare or not question or normalise(bare) in normalise(question):
        return question
    return fill_template(PRESETS[language].standalone, {"topic": bare, "question": question})
