"""Identity (self-cognition) records, the pure half: what to ask the LLM for,
what to accept from it, and where a run stands according to its ledger rows.

A record teaches the assistant who it is: a question a user might put to it
("who are you?", "what can you do?", "who made you?", "what can't you do?", a
greeting) answered in its own voice, consistent with the system prompt it is
deployed with. The LLM writes the questions (:func:`question_messages`) and,
in a separate call per question, the answer (:func:`answer_messages`); every
question is screened (:func:`screen_question`) and every answer checked
(:func:`check_answer`): it must say the assistant's name and must never name
another model or company (:data:`OTHER_IDENTITIES`, plus the user's own list,
minus whatever the settings themselves say).

Nothing here does I/O or awaits; ``pipeline.qa.identity_stage`` drives it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.qa.questions import TEMPLATE_MARKERS, fill_template, normalise
from pipeline.settings import ConversationSettings, IdentitySettings

__all__ = [
    "KINDS",
    "OTHER_IDENTITIES",
    "Facts",
    "IdentityQuestion",
    "IdentityState",
    "Kind",
    "answer_messages",
    "answer_row",
    "batch_row",
    "check_answer",
    "fold",
    "question_messages",
    "question_row",
    "screen_question",
    "targets",
]

Kind = Literal["who", "abilities", "maker", "limits", "greeting"]
KINDS: tuple[Kind, ...] = ("who", "abilities", "maker", "limits", "greeting")

# Models and their makers an assistant fine-tuned on top of one of them tends to
# claim to be. Latin names match as whole words, any case; the Chinese ones are
# names only a model or company carries (common words such as 星火 or 混元 are
# left out: a domain text may use them).
OTHER_IDENTITIES: tuple[str, ...] = (
    "OpenAI", "ChatGPT", "GPT", "Claude", "Anthropic", "Gemini", "Bard", "Google", "DeepMind",
    "Meta", "LLaMA", "Mistral", "Microsoft", "Copilot", "Bing", "Qwen", "Tongyi", "Alibaba",
    "DeepSeek", "Kimi", "Moonshot", "ChatGLM", "GLM", "Zhipu", "Baichuan", "InternLM", "ERNIE",
    "Baidu", "Tencent", "Hunyuan", "ByteDance", "Doubao", "iFlytek", "MiniMax", "Grok", "xAI",
    "Siri", "Alexa", "Cohere", "Perplexity",
    "通义千问", "通义", "千问", "阿里巴巴", "阿里云", "文心一言", "百度", "深度求索", "月之暗面",
    "智谱", "讯飞星火", "科大讯飞", "豆包", "字节跳动", "腾讯", "百川智能", "书生·浦语", "浦语",
    "上海人工智能实验室", "零一万物", "商汤", "谷歌", "微软",
)

_LATIN = re.compile(r"[A-Za-z]")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True, slots=True)
class Facts:
    """Who the assistant is, as the settings say, and the names it must not use."""

    name: str
    author: str
    purpose: str
    system_prompt: str
    forbidden: re.Pattern[str] | None

    @classmethod
    def of(cls, identity: IdentitySettings, conversations: ConversationSettings) -> Facts:
        """Facts from the settings. A built-in name that the settings use
        themselves (the assistant built on Qwen by Alibaba says so in its
        system prompt) is allowed."""
        own = " ".join((identity.name, identity.author, identity.purpose, conversations.system_prompt))
        names = [n for n in (*OTHER_IDENTITIES, *identity.other_names)
                 if n.strip() and not _names_pattern([n]).search(own)]  # type: ignore[union-attr]
        return cls(identity.name.strip(), identity.author.strip(), identity.purpose.strip(),
                   conversations.system_prompt, _names_pattern(names))

    def other_name_in(self, text: str) -> str | None:
        """The first other model or company ``text`` names, or None."""
        if self.forbidden is None:
            return None
        m = self.forbidden.search(text)
        return m.group(0) if m else None


def _names_pattern(names: Sequence[str]) -> re.Pattern[str] | None:
    if not names:
        return None
    parts = []
    # Longest first, so "ChatGPT" is reported rather than "GPT".
    for name in sorted(set(names), key=len, reverse=True):
        escaped = re.escape(name.strip())
        if _LATIN.search(name):
            # Whole words only: "Bing" is not in "Binghamton", "GPT" is in "GPT-4o".
            parts.append(rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z])")
        else:
            parts.append(escaped)
    return re.compile("|".join(parts), re.IGNORECASE)


# --------------------------------------------------------------------------- prompts

@dataclass(frozen=True, slots=True)
class _Prompts:
    question_system: str
    question_user: str
    avoid: str
    kinds: Mapping[Kind, str]
    answer_system: str
    author_line: str
    purpose_line: str


_PROMPTS: dict[str, _Prompts] = {
    "zh": _Prompts(
        question_system=(
            "你在为一个AI助手准备训练数据。请写出用户可能对这个助手说的话，用中文，"
            "每条不超过{max_chars}个字，彼此不同，措辞、语气和长短多样，不要提到任何具体的模型或公司名称。"
            "只返回一个列表，格式为 ['……', '……']，不要其他内容。"
        ),
        question_user="请写出{n}条{kind}。",
        avoid="下面这些已经有了，请写不同的：\n{examples}",
        kinds={
            "who": "用户询问助手是谁、叫什么名字的问题",
            "abilities": "用户询问助手能做什么、有什么功能、擅长什么的问题",
            "maker": "用户询问助手是谁开发的、由哪个团队或机构制作的问题",
            "limits": "用户询问助手有什么不能做、有哪些局限的问题",
            "greeting": "用户对助手的问候或开场白（可以顺便问一句它是谁或能帮什么忙）",
        },
        answer_system=(
            "{system_prompt}\n\n关于你自己：你的名字是{name}；{author_line}{purpose_line}\n"
            "现在用户问到了你自己。请以{name}的身份、用第一人称、用中文回答，"
            "亲切简洁（不超过{max_chars}个字），回答中要说出你的名字“{name}”。"
            "不要自称是其他任何模型，不要说自己由其他公司或团队开发，也不要提到其他模型或公司。"
        ),
        author_line="你由{author}开发；",
        purpose_line="你的用途：{purpose}",
    ),
    "en": _Prompts(
        question_system=(
            "You are preparing training data for an AI assistant. Write things a user might say "
            "to this assistant, in English, each at most {max_chars} characters, all different, "
            "varied in wording, tone and length, naming no particular model or company. "
            "Return only a JSON list of strings, like [\"...\", \"...\"], nothing else."
        ),
        question_user="Write {n} different {kind}.",
        avoid="These exist already; write different ones:\n{examples}",
        kinds={
            "who": "questions a user asks the assistant about who it is and what its name is",
            "abilities": "questions a user asks the assistant about what it can do and what it is good at",
            "maker": "questions a user asks the assistant about who made it, which team or organisation",
            "limits": "questions a user asks the assistant about what it cannot do and its limits",
            "greeting": "greetings or openers a user says to the assistant (maybe asking who it is "
                        "or how it can help)",
        },
        answer_system=(
            "{system_prompt}\n\nAbout yourself: your name is {name}; {author_line}{purpose_line}\n"
            "The user is now asking about you. Answer as {name}, in the first person, in English, "
            "warmly and briefly (at most {max_chars} characters), and say your name, \"{name}\", "
            "in the answer. Never claim to be any other model, never say another company or team "
            "made you, and do not mention other models or companies."
        ),
        author_line="you were made by {author}; ",
        purpose_line="your purpose: {purpose}",
    ),
}


def question_messages(
    facts: Facts, lang: str, kind: Kind, n: int, max_chars: int, accepted_sample: Sequence[str] = ()
) -> list[dict[str, str]]:
    """Chat messages asking for ``n`` user questions of ``kind`` in ``lang``;
    with ``accepted_sample``, asking for ones unlike those."""
    p = _PROMPTS[lang]
    values = {"n": str(n), "kind": p.kinds[kind], "max_chars": str(max_chars), "name": facts.name}
    user = fill_template(p.question_user, values)
    if accepted_sample:
        examples = "\n".join(f"- {q}" for q in accepted_sample)
        user = f"{user}\n{fill_template(p.avoid, {'examples': examples})}"
    return [{"role": "system", "content": fill_template(p.question_system, values)},
            {"role": "user", "content": user}]


def answer_messages(facts: Facts, lang: str, question: str, max_chars: int) -> list[dict[str, str]]:
    """Chat messages asking for the assistant's own answer to ``question``:
    the deployed system prompt, the facts, and how to answer."""
    p = _PROMPTS[lang]
    author = fill_template(p.author_line, {"author": facts.author}) if facts.author else ""
    # The purpose defaults to the system prompt, which the prompt carries already.
    purpose = (fill_template(p.purpose_line, {"purpose": facts.purpose})
               if facts.purpose and facts.purpose != facts.system_prompt else "")
    system = fill_template(p.answer_system, {
        "system_prompt": facts.system_prompt, "name": facts.name, "author_line": author,
        "purpose_line": purpose, "max_chars": str(max_chars),
    })
    return [{"role": "system", "content": system.replace("\n\n\n", "\n\n").strip()},
            {"role": "user", "content": question}]


# --------------------------------------------------------------------------- checks

def _language_of(text: str) -> str | None:
    """"zh" or "en" by which script has more letters; None when neither has any."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if not cjk and not latin:
        return None
    return "zh" if cjk >= latin else "en"


def _common(text: str, facts: Facts, lang: str) -> str | None:
    if not text.strip():
        return "empty"
    if any(m in text for m in TEMPLATE_MARKERS):
        return "template_marker"
    if facts.other_name_in(text) is not None:
        return "other_identity"
    # The name and the maker may be in another script than the answer ("I am 悟了悟了").
    rest = text
    for own in (facts.name, facts.author):
        if own:
            rest = rest.replace(own, " ")
    if _language_of(rest) not in (lang, None):
        return "wrong_language"
    return None


# Two list items glued into one by a list the parser could not split
# ("Hi!', 'Who's this?": an apostrophe inside a single-quoted item).
_GLUED = re.compile(r"""['"‘’“”]\s*[,，、]\s*['"‘’“”]""")


def screen_question(q: str, facts: Facts, lang: str, max_chars: int) -> str | None:
    """Why ``q`` is no usable identity question in ``lang``, as a stable code
    ("empty", "template_marker", "too_long", "other_identity": it names another
    model or company, so no answer to it could pass, "wrong_language",
    "glued": two list items in one), or None. A greeting need not be a question."""
    reason = _common(q, facts, lang)
    if reason is None and len(q.strip()) > max_chars:
        return "too_long"
    if reason is None and _GLUED.search(q):
        return "glued"
    return reason


def check_answer(answer: str, facts: Facts, lang: str, max_chars: int) -> str | None:
    """Why ``answer`` cannot teach the assistant who it is, as a stable code
    ("empty", "template_marker", "other_identity", "wrong_language",
    "no_name": it does not say the assistant's name, "too_long"), or None."""
    reason = _common(answer, facts, lang)
    if reason is not None:
        return reason
    if normalise(facts.name) not in normalise(answer):
        return "no_name"
    if len(answer.strip()) > max_chars:
        return "too_long"
    return None


# --------------------------------------------------------------------------- the plan

def targets(languages: Sequence[str], records: int) -> dict[tuple[str, Kind], int]:
    """Records wanted per (language, kind): ``records`` spread evenly over the
    languages, then over :data:`KINDS`, the first ones taking the remainder."""
    out: dict[tuple[str, Kind], int] = {}
    per_lang, extra = divmod(records, len(languages))
    for i, lang in enumerate(languages):
        mine = per_lang + (i < extra)
        per_kind, more = divmod(mine, len(KINDS))
        for j, kind in enumerate(KINDS):
            out[(lang, kind)] = per_kind + (j < more)
    return out


@dataclass(slots=True)
class IdentityQuestion:
    """One recorded question and what became of it."""

    id: str
    lang: str
    kind: Kind
    text: str
    attempts: int = 0
    answer: str | None = None       # the accepted answer
    reasons: list[str] = field(default_factory=list)  # why each rejected answer was


# --------------------------------------------------------------------------- ledger rows
#
# ``state/identity.jsonl``, append-only, one JSON object per line:
#   {"type": "question", "id", "lang", "kind", "text"}              an accepted question
#   {"type": "batch", "lang", "kind", "asked", "got", "dropped", "tokens"}  a question-writing call
#   {"type": "answer", "id", "text", "reason"?, "tokens"}           an answer; with a reason, rejected
#   {"type": "run_end", "status", "detail", "time"}                 how a run ended
# ``tokens`` is [prompt, completion] of the call, so cost survives a killed run.


def question_row(q: IdentityQuestion) -> dict[str, Any]:
    return {"type": "question", "id": q.id, "lang": q.lang, "kind": q.kind, "text": q.text}


def batch_row(lang: str, kind: str, asked: int, got: int, dropped: Mapping[str, int],
              tokens: Sequence[int]) -> dict[str, Any]:
    return {"type": "batch", "lang": lang, "kind": kind, "asked": asked, "got": got,
            "dropped": dict(dropped), "tokens": list(tokens)}


def answer_row(qid: str, text: str, reason: str | None, tokens: Sequence[int]) -> dict[str, Any]:
    row: dict[str, Any] = {"type": "answer", "id": qid, "text": text}
    if reason is not None:
        row["reason"] = reason
    row["tokens"] = list(tokens)
    return row


@dataclass(slots=True)
class IdentityState:
    """Where the identity records stand: every question in ledger order, the
    question-writing calls made per (language, kind), drops, tokens, runs."""

    facts: Facts
    max_answer_chars: int
    questions: dict[str, IdentityQuestion] = field(default_factory=dict)
    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=lambda: [0, 0])
    runs: list[dict[str, Any]] = field(default_factory=list)

    def in_slot(self, lang: str, kind: str) -> list[IdentityQuestion]:
        return [q for q in self.questions.values() if q.lang == lang and q.kind == kind]

    def accepted(self) -> list[IdentityQuestion]:
        """Questions with an accepted answer, in ledger order."""
        return [q for q in self.questions.values() if q.answer is not None]

    def apply(self, row: Mapping[str, Any]) -> None:
        """Take one ledger row into the state. An answer accepted by an earlier
        run is checked again against today's facts (the name may have changed
        since): one that fails counts as a rejected attempt."""
        kind = row.get("type")
        tokens = row.get("tokens") or (0, 0)
        if kind in ("batch", "answer"):
            self.tokens[0] += int(tokens[0])
            self.tokens[1] += int(tokens[1])
        if kind == "question":
            qid = str(row["id"])
            self.questions.setdefault(qid, IdentityQuestion(qid, str(row["lang"]), row["kind"], str(row["text"])))
        elif kind == "answer":
            q = self.questions.get(str(row["id"]))
            if q is None or q.answer is not None:
                return
            q.attempts += 1
            reason = row.get("reason")
            if reason is None:
                reason = check_answer(str(row["text"]), self.facts, q.lang, self.max_answer_chars)
            if reason is None:
                q.answer = str(row["text"])
            else:
                q.reasons.append(str(reason))
        elif kind == "batch":
            slot = (str(row["lang"]), str(row["kind"]))
            self.calls[slot] = self.calls.get(slot, 0) + 1
            for reason, n in (row.get("dropped") or {}).items():
                self.dropped[reason] = self.dropped.get(reason, 0) + int(n)
        elif kind == "run_end":
            self.runs.append(dict(row))


def fold(rows: Iterable[Mapping[str, Any]], facts: Facts, max_answer_chars: int) -> IdentityState:
    """The state the identity ledger's ``rows`` describe."""
    state = IdentityState(facts, max_answer_chars)
    for row in rows:
        state.apply(row)
    return state
