"""A fake OpenAI-compatible LLM API on 127.0.0.1, for tests and benchmarks.

In-process::

    async with FakeLLM(api_key="sk-test") as fake:
        settings = LLMSettings(base_url=fake.base_url, ...)
        fake.latency = (0.01, 0.05)          # switch behaviour per test
        fake.script(500, "drop", Failure.rate_limited(2.0))

As a subprocess (prints its base URL on the first line of stdout)::

    python -m tests.fakes.llm_server --port 0 --latency 0.05 --api-key sk-test

Routes: ``POST /v1/chat/completions`` (OpenAI response shape, with ``usage``)
and ``GET /v1/models``. Every behaviour is an attribute of :class:`FakeLLM`
that a test may change at any time; everything it saw is recorded on it.

It speaks what real models and providers send back (see :data:`THINK_STYLES`,
:data:`REFUSAL_STYLES`, :meth:`Failure.reply`): reasoning in ``<think>`` blocks
(closed, unclosed at ``max_tokens``, opened by the template) whose drafts look
like answers, ``reasoning_content`` / ``reasoning`` fields, ``content: null``,
``choices: []``, and each provider's content-safety refusal.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import math
import random
import re
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

__all__ = [
    "QUOTA_STYLES",
    "REFUSAL_STYLES",
    "THINK_STYLES",
    "SHAPES",
    "FakeLLM",
    "Failure",
    "format_questions",
    "grounded_answer",
    "make_questions",
    "passage_questions",
]

Messages = list[dict[str, str]]
Responder = Callable[[Messages], str]

SHAPES: tuple[str, ...] = (
    "json",              # ["q1", "q2"]
    "python",            # ['q1', 'q2']  (what the zh preset asks for)
    "numbered",          # 1. q1\n2. q2
    "numbered_cn",       # 1、q1\n2、q2
    "bulleted",          # - q1\n- q2
    "fenced",            # ```json\n[...]\n```
    "chatty",            # a sentence, the list, a closing sentence
    "fullwidth_corner",  # ［「q1」，「q2」］
    "fullwidth_quotes",  # [“q1”，“q2”]
)

QUOTA_STYLES: tuple[str, ...] = ("openai", "deepseek", "siliconflow", "siliconflow_daily")

# How a reasoning model's reply carries its reasoning:
THINK_STYLES: tuple[str, ...] = (
    "closed",        # <think>draft</think>\n\nanswer          (Qwen3, QwQ on vLLM/SGLang/Ollama)
    "close_only",    # draft</think>\n\nanswer                 (DeepSeek-R1: the template opened it)
    "unclosed",      # <think>draft ...  cut by max_tokens, finish_reason "length", no answer
    "field",         # answer, with reasoning_content and reasoning fields beside it (DeepSeek API)
)

# Content-safety refusals, per provider (status and body as each sends them).
REFUSAL_STYLES: tuple[str, ...] = ("deepseek", "dashscope", "openai", "azure", "azure_200")

# 61 is prime: question k uses words a, a+d, a+2d (mod 61) with d in 1..60, so
# any two of the first 61*60 questions share at most one word in the same
# slot, which keeps them apart under character n-gram near-duplicate checks.
_N = 61
_ZH_WORDS = (
    "孙悟空 二郎神 猪八戒 黄风大圣 黑熊精 虎先锋 小骊龙 亢金龙 百眼魔君 紫蛛儿 牛魔王 铁扇公主 红孩儿 "
    "弥勒佛 观音禅院 花果山 火焰山 小西天 黄风岭 盘丝洞 定风珠 金箍棒 紫金葫芦 芭蕉扇 避火罩 风铃 "
    "筋斗云 如意画轴 照妖镜 土地庙 天命人 灵虚子 广智 幽魂 石先锋 赤尻马猴 白衣秀士 蝜蝂 鼍龙 青背龙 "
    "袁守诚 杨戬 浪波波 戒刀 棍法 法术 变身 精魄 葫芦酒 泡酒物 珍玩 丹药 聚形散气 定身法 身外身法 "
    "铜头铁臂 安身法 识破 劈棍 立棍 戳棍"
).split()
_EN_WORDS = (
    "Wukong,Erlang,Bajie,the Sage,Black Bear,the Tiger,Kang-Jin,Red Boy,Maitreya,Guanyin,Fire Hills,"
    "the Ridge,the Hollow,the Pearl,the Staff,the Gourd,the Fan,the Mantle,the Chime,Cloud Step,the Scroll,"
    "the Mirror,the Shrine,Lingxuzi,Guangzhi,the Wight,the Macaque,Fuban,Tuo Loong,Blue Loong,Yang Jian,"
    "the Frog,Smash,Pillar,Thrust,spells,spirits,wine,soaks,curios,pills,Immobilize,Rock Solid,Ring of Fire,"
    "combos,the Court,the Temple,the Bell,the Drum,the Monk,the Fox,the Rat,the Boar,the Spider,the Centipede,"
    "the Bull,the Rakshasi,the Dragon,the Keeper,the Yaoguai,the Tower"
).split(",")
_ZH_TEMPLATES = (
    "{a}、{b}与{c}之间有什么联系？",
    "{a}如何影响{b}和{c}？",
    "在{a}中，{b}和{c}分别代表什么？",
    "{a}、{b}、{c}哪个最先出场？",
    "{a}对付{b}时要不要用{c}？",
)
_EN_TEMPLATES = (
    "How are {a}, {b} and {c} related?",
    "How does {a} change {b} and {c}?",
    "What do {b} and {c} mean in {a}?",
    "Which comes first: {a}, {b} or {c}?",
    "Should {c} be used when {a} fights {b}?",
)
_ZH_FOLLOWUPS = ("能再具体讲讲{a}和{b}的细节吗？", "{a}与{b}的故事后来怎样了？", "为什么{a}要找{b}？")
_EN_FOLLOWUPS = ("Can you say more about {a} and {b}?", "What happened next to {a} and {b}?")

# Identity (self-cognition) prompts: pipeline/qa/identity.py's wording.
_ID_ZH_ASK = re.compile(r"请写出(?P<n>\d+)条(?P<what>用户[^。\n]*)")
_ID_EN_ASK = re.compile(r"Write (?P<n>\d+) different (?P<what>(?:questions a user asks|greetings)[^\n]*)")
_ID_ZH_FACTS = re.compile(r"关于你自己：你的名字是(?P<name>[^；\n]+)；(?:你由(?P<author>[^；\n]+)开发；)?")
_ID_EN_FACTS = re.compile(r"About yourself: your name is (?P<name>[^;\n]+); (?:you were made by (?P<author>[^;\n]+); )?")
_ID_KIND_WORDS = (  # first match wins: "不能做" before "能做"
    ("limits", ("不能做", "局限", "cannot do")),
    ("maker", ("开发", "制作", "made it", "made you", "谁做")),
    ("greeting", ("问候", "greetings", "你好", "hello", "hi,", "hi!")),
    ("abilities", ("能做", "功能", "擅长", "can do", "can you do", "good at", "help")),
    ("who", ("是谁", "名字", "who", "name", "yourself", "介绍")),
)
_ID_ZH_OPENERS = ("", "请问", "冒昧问一下，", "我想知道", "嘿，", "能不能告诉我，", "说说看，", "好奇问下，")
_ID_EN_OPENERS = ("", "Quick question: ", "I'm curious, ", "Hey, ", "Excuse me, ", "Tell me, ",
                  "Out of interest, ", "So ")
_ID_ZH_CORES = {
    "who": ("你是谁？", "你叫什么名字？", "你是什么助手？", "我该怎么称呼你？", "你能介绍一下你自己吗？"),
    "abilities": ("你能做些什么？", "你有哪些功能？", "你最擅长回答什么问题？", "你能帮我什么忙？",
                  "你都会些什么？"),
    "maker": ("你是谁开发的？", "是哪个团队做出了你？", "你的开发者是谁？", "谁创造了你？",
              "你背后是哪家机构？"),
    "limits": ("你有什么做不到的事？", "你的局限是什么？", "有什么问题是你回答不了的？",
               "你会不会出错？", "哪些事情我不该问你？"),
    "greeting": ("你好呀！", "早上好，你是谁呀？", "嗨，初次见面！", "你好，能帮我个忙吗？", "哈喽，在吗？"),
}
_ID_EN_CORES = {
    "who": ("who are you?", "what's your name?", "what kind of assistant are you?",
            "what should I call you?", "can you introduce yourself?"),
    "abilities": ("what can you do?", "what are your features?", "what are you best at?",
                  "how can you help me?", "what questions can you answer?"),
    "maker": ("who made you?", "which team built you?", "who is your developer?", "who created you?",
              "what organisation is behind you?"),
    "limits": ("what can't you do?", "what are your limits?", "which questions can't you answer?",
               "do you ever make mistakes?", "what shouldn't I ask you?"),
    "greeting": ("hello there!", "good morning, who's this?", "hi, nice to meet you!",
                 "hey, can you help me out?", "hi, anyone here?"),
}
# What a model fine-tuned from another says when it forgets who it is.
_ID_SLIPS = {"zh": "我是DeepSeek，由深度求索公司开发的AI助手，很高兴为你服务。",
             "en": "I am ChatGPT, a large language model trained by OpenAI. How can I help?"}
_ID_NOISE = {"zh": "你和ChatGPT有什么区别？", "en": "Are you better than Claude?"}

_ZH_ASK = re.compile(r"「(?P<aspect>[^」]+)」提出\s*(?P<n>\d+)\s*个")
_EN_ASK = re.compile(r"Write (?P<n>\d+) different questions about the (?P<aspect>.+?) of ")
_FOLLOWUP = re.compile(r"追问|follow-up", re.IGNORECASE)
# The passage question writer's prompt (pipeline.presets passage_user).
_PASSAGE = re.compile(r"<passage>\n(?P<passage>.*?)\n</passage>", re.S)
_PASSAGE_N = re.compile(r"最多\s*(?P<n>\d+)\s*个问题|at most (?P<en>\d+) questions")
# The local RAG backend's answer prompt (pipeline.presets rag_answer).
_RAG = re.compile(r"(?:资料：|Material:)\n(?P<material>.*)\n\n(?:问题：|Question: )(?P<question>.*)$", re.S)
_RAG_MARKER = "NOT_IN_MATERIAL"
_SENTENCE = re.compile(r"[^。！？!?\n]+[。！？!?]?")
_QUOTED_FRAGMENT = re.compile(r"「(?P<zh>[^」]+)」|\"(?P<en>[^\"]+)\"")
_FRAGMENT_CHARS = 12  # characters of a sentence a passage question quotes


def _identity_kind(text: str) -> str:
    lowered = text.lower()
    for kind, words in _ID_KIND_WORDS:
        if any(w in lowered for w in words):
            return kind
    return "who"


def _is_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def make_questions(start: int, count: int, *, zh: bool = True) -> list[str]:
    """Questions number ``start`` .. ``start+count-1`` of a fixed sequence.

    The first 3660 are pairwise dissimilar (no two share more than one word
    in the same slot); later ones carry a number and may look alike.
    """
    words = _ZH_WORDS if zh else _EN_WORDS
    templates = _ZH_TEMPLATES if zh else _EN_TEMPLATES
    out = []
    for k in range(start, start + count):
        a = k % _N
        d = (k // _N) % (_N - 1) + 1
        text = templates[k % len(templates)].format(
            a=words[a], b=words[(a + d) % _N], c=words[(a + 2 * d) % _N]
        )
        if k >= _N * (_N - 1):
            text = f"{text[:-1]}（第{k}问）{text[-1]}" if zh else f"{text[:-1]} (#{k}){text[-1]}"
        out.append(text)
    return out


def passage_questions(passage: str, n: int, *, zh_prompt: bool | None = None) -> list[str]:
    """Up to ``n`` questions written FROM ``passage``: each quotes, verbatim, the
    start of one of its sentences (the first ``n`` sentences long enough), so
    a test can find the passage a question came from. Written in the prompt's
    language when ``zh_prompt`` is given (a model asked in Chinese about an
    English passage asks in Chinese), else in the fragment's."""
    out: list[str] = []
    for m in _SENTENCE.finditer(passage):
        sentence = m.group().strip()
        fragment = sentence[:_FRAGMENT_CHARS].rstrip("。！？!?，,；;：: ")
        if len(fragment) < 6 or "」" in fragment or '"' in fragment:
            continue
        zh = _is_cjk(fragment) if zh_prompt is None else zh_prompt
        out.append(f"「{fragment}」说的是什么？" if zh else f'What is meant by "{fragment}"?')
        if len(out) == n:
            break
    return out


def grounded_answer(material: str, question: str) -> str:
    """What a careful model answers from ``material`` only: the sentence that
    holds the fragment a passage question quotes, or one that names a word of
    a generated question; else the not-in-material marker."""
    quoted = _QUOTED_FRAGMENT.search(question)
    if quoted is not None:
        needles = [quoted.group("zh") or quoted.group("en")]
    else:
        needles = [w for w in (*_ZH_WORDS, *_EN_WORDS) if w in question]
    for needle in needles:
        for m in _SENTENCE.finditer(material):
            if needle in m.group():
                return m.group().strip()
    return _RAG_MARKER


def format_questions(questions: Sequence[str], shape: str) -> str:
    """Render a question list the way some real model would."""
    qs = list(questions)
    if shape == "json":
        return json.dumps(qs, ensure_ascii=False)
    if shape == "python":
        return "[" + ", ".join(f"'{q}'" for q in qs) + "]"
    if shape == "numbered":
        return "\n".join(f"{i}. {q}" for i, q in enumerate(qs, 1))
    if shape == "numbered_cn":
        return "\n".join(f"{i}、{q}" for i, q in enumerate(qs, 1))
    if shape == "bulleted":
        return "\n".join(f"- {q}" for q in qs)
    if shape == "fenced":
        return "```json\n" + json.dumps(qs, ensure_ascii=False, indent=2) + "\n```"
    if shape == "chatty":
        zh = any(_is_cjk(q) for q in qs)
        head = "好的，以下是为您准备的问题：" if zh else "Sure! Here are the questions you asked for:"
        tail = "希望这些问题对您有帮助！" if zh else "Let me know if you need more."
        return f"{head}\n\n{json.dumps(qs, ensure_ascii=False)}\n\n{tail}"
    if shape == "fullwidth_corner":
        return "［" + "，".join(f"「{q}」" for q in qs) + "］"
    if shape == "fullwidth_quotes":
        return "[" + "，".join(f"“{q}”" for q in qs) + "]"
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


@dataclass(frozen=True, slots=True)
class Failure:
    """One scripted misbehaviour, served to the next request instead of an answer."""

    kind: Literal["status", "drop", "hang", "reply"]
    status: int = 500
    message: str = ""
    retry_after: float | None = None      # seconds, in ``Retry-After``
    retry_after_ms: float | None = None   # milliseconds, in ``retry-after-ms``
    retry_after_date: bool = False         # send ``Retry-After`` as an HTTP date
    code: str | None = None
    body: dict[str, Any] | None = None     # a whole body, for providers' own shapes
    # kind "reply": a 200 whose first choice has this content and finish reason;
    # no_choices: a 200 with "choices": []
    content: str | None = None
    finish_reason: str = "stop"
    no_choices: bool = False
    extra: dict[str, Any] | None = None    # more fields of the message (reasoning_content ...)

    @classmethod
    def rate_limited(cls, retry_after: float | None = None, **kw: Any) -> Failure:
        return cls("status", 429, "Rate limit reached for requests per min (RPM)",
                   retry_after=retry_after, code="rate_limit_exceeded", **kw)

    @classmethod
    def reply(cls, content: str | None, finish_reason: str = "stop", **kw: Any) -> Failure:
        """A 200 carrying ``content`` (None: ``"content": null``) as the reply."""
        return cls("reply", 200, content=content, finish_reason=finish_reason, **kw)

    @classmethod
    def empty_choices(cls) -> Failure:
        return cls("reply", 200, no_choices=True)

    @classmethod
    def refusal(cls, style: str) -> Failure:
        """The provider's content-safety refusal (one of :data:`REFUSAL_STYLES`)."""
        if style == "azure_200":
            return cls.reply(None, "content_filter", extra={"refusal": None})
        status, body = _refusal_response(style)
        return cls("status", status, body=body)

    @classmethod
    def drop(cls) -> Failure:
        return cls("drop")

    @classmethod
    def hang(cls) -> Failure:
        return cls("hang")

    @classmethod
    def of(cls, item: Failure | int | str) -> Failure:
        """``500`` / ``"503"`` / ``"drop"`` / ``"hang"`` / ``"429"`` -> a Failure."""
        if isinstance(item, Failure):
            return item
        if item in ("drop", "hang"):
            return cls(item)  # type: ignore[arg-type]
        status = int(item)
        if status == 429:
            return cls.rate_limited()
        return cls("status", status)


def _error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _quota_response(style: str) -> tuple[int, dict[str, Any]]:
    if style == "openai":
        return 429, _error_body(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota", "insufficient_quota",
        )
    if style == "deepseek":
        return 402, _error_body("Insufficient Balance", "unknown_error", "invalid_request_error")
    if style == "siliconflow":
        return 403, {"code": 30001, "message": "Sorry, your account balance is insufficient", "data": None}
    if style == "siliconflow_daily":
        return 429, {"code": 50603,
                     "message": "Request was rejected due to rate limiting. Details: RPD limit reached.",
                     "data": None}
    raise ValueError(f"unknown quota style {style!r}; known styles: {', '.join(QUOTA_STYLES)}")


def _refusal_response(style: str) -> tuple[int, dict[str, Any]]:
    if style == "deepseek":
        return 400, _error_body("Content Exists Risk", "invalid_request_error", "invalid_request_error")
    if style == "dashscope":
        return 400, _error_body("Input data may contain inappropriate content.",
                                "data_inspection_failed", "data_inspection_failed")
    if style == "openai":
        return 400, _error_body(
            "Your request was rejected as a result of our safety system. Your prompt may contain "
            "text that is not allowed by our safety system.",
            "invalid_request_error", "content_policy_violation",
        )
    if style == "azure":
        body = _error_body(
            "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy. Please modify your prompt and retry. To learn more about our content "
            "filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
            None, "content_filter",  # type: ignore[arg-type]
        )
        body["error"]["param"] = "prompt"
        body["error"]["status"] = 400
        body["error"]["innererror"] = {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": False, "severity": "safe"},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": True, "severity": "medium"},
            },
        }
        return 400, body
    raise ValueError(f"unknown refusal style {style!r}; known styles: {', '.join(REFUSAL_STYLES)}")


def _draft(messages: Messages) -> str:
    """The scratch work of a reasoning model, with decoys that look like data:
    a draft question list, a draft follow-up, the local backend's marker."""
    text = "\n".join(str(m.get("content", "")) for m in messages)
    if _is_cjk(text):
        return ("用户要我写问题。先列个草稿：['草稿问题甲是什么？', '草稿问题乙是什么？', '草稿问题丙是什么？']\n"
                "追问草稿：草稿追问是什么？如果资料里没有答案，就回复 NOT_IN_MATERIAL 。好，现在正式回答。")
    return ("The user wants questions. Draft: [\"What is draft question one?\", \"What is draft question two?\"]\n"
            "Draft follow-up: What is the draft follow-up? If the material lacks it, reply NOT_IN_MATERIAL. "
            "Now the real answer.")


def _rough_tokens(text: str) -> int:
    return max(1, len(text) // 2)


class FakeLLM:
    """The fake service. Change attributes between or during calls; read the records."""

    def __init__(
        self,
        *,
        api_key: str = "sk-fake",
        models: Iterable[str] = ("deepseek-ai/DeepSeek-V2.5", "fake-model"),
        strict_models: bool = True,
        latency: float | tuple[float, float] = 0.0,
        rpm_limit: int | None = None,
        quota_after: int | None = None,
        quota_style: str = "openai",
        shape: str = "python",
        responder: Responder | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
        first_question: int = 0,
        think: str | None = None,
        refuse_every: int | None = None,
        refusal_style: str = "deepseek",
    ) -> None:
        # behaviour
        self.api_key = api_key
        self.models = list(models)
        self.strict_models = strict_models
        self.latency = latency
        self.rpm_limit = rpm_limit
        self.quota_after = quota_after
        self.quota_style = quota_style
        self.shape = shape  # one of SHAPES, or "mixed" to cycle through them
        self.responder = responder
        # Every n-th identity answer claims to be another model (0: never).
        self.identity_slip_every = 4
        self.identity_answers = 0
        self.think = think  # one of THINK_STYLES: every reply carries reasoning that way
        # Every refuse_every-th chat request (counted from 1) is refused in refusal_style.
        self.refuse_every = refuse_every
        self.refusal_style = refusal_style
        # A content filter: prompts for which it returns True are refused in refusal_style.
        self.refuse_if: Callable[[Messages], bool] | None = None
        self.clock = clock  # for the RPM window; tests may move it
        self.failures: collections.deque[Failure] = collections.deque()
        self.gate: asyncio.Event | None = None  # when set up, answers wait for it
        # records
        self.calls = 0
        self.served = 0
        self.status_counts: collections.Counter[int | str] = collections.Counter()
        self.requests: list[Messages] = []
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.model_list_calls = 0
        # internals
        self._rng = random.Random(seed)
        self._window: collections.deque[float] = collections.deque()
        # A fake started to stand in for another one (a resume) starts past the
        # questions that one wrote, so "every question is new" holds across both.
        self._counter = itertools.count(first_question)
        self._shape_cycle = itertools.cycle(SHAPES)
        self._stopping = asyncio.Event()
        self._in_flight_waiters: list[tuple[int, asyncio.Event]] = []
        self._answered_waiters: list[tuple[Callable[[], bool], asyncio.Event]] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle ---------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        return app

    async def start(self, port: int = 0) -> str:
        """Bind 127.0.0.1 (a free port unless given) and return the base URL."""
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{bound}/v1"
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()
        if self.gate is not None:
            self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeLLM:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- switches ----------------------------------------------------------

    def script(self, *items: Failure | int | str) -> None:
        """Queue failures, served one per request before any normal answer."""
        self.failures.extend(Failure.of(i) for i in items)

    async def wait_in_flight(self, n: int) -> None:
        """Return once ``n`` requests are inside the server at the same time."""
        if self.in_flight >= n:
            return
        event = asyncio.Event()
        self._in_flight_waiters.append((n, event))
        await event.wait()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked as each request is answered."""
        if condition():
            return
        event = asyncio.Event()
        self._answered_waiters.append((condition, event))
        await event.wait()

    # -- handlers ----------------------------------------------------------

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self.model_list_calls += 1
        if not self._authorised(request):
            return self._unauthorised(request)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        for n, event in self._in_flight_waiters:
            if self.in_flight >= n:
                event.set()
        try:
            response = await self._chat_inner(request)
        finally:
            self.in_flight -= 1
            for condition, event in self._answered_waiters:
                if condition():
                    event.set()
        return response

    async def _chat_inner(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return self._status(400, _error_body("body is not JSON", "invalid_request_error", None))
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return self._status(422, _error_body("messages: expected a list of objects",
                                                 "invalid_request_error", None))
        self.requests.append(messages)
        self.bodies.append(body)
        if not self._authorised(request):
            return self._unauthorised(request)
        if self.failures:
            failure = self.failures.popleft()
            if failure.kind == "reply":
                return self._reply(body, messages, failure)
            return await self._fail(request, failure)
        if (self.refuse_every and self.calls % self.refuse_every == 0) or (
            self.refuse_if is not None and self.refuse_if(messages)
        ):
            failure = Failure.refusal(self.refusal_style)
            if failure.kind == "reply":
                return self._reply(body, messages, failure)
            return await self._fail(request, failure)
        model = body.get("model")
        if self.strict_models and model not in self.models:
            return self._status(404, _error_body(f"The model `{model}` does not exist",
                                                 "invalid_request_error", "model_not_found"))
        if self.quota_after is not None and self.served >= self.quota_after:
            status, payload = _quota_response(self.quota_style)
            return self._status(status, payload)
        if self.rpm_limit is not None:
            now = self.clock()
            while self._window and self._window[0] <= now - 60.0:
                self._window.popleft()
            if len(self._window) >= self.rpm_limit:
                wait = max(1, math.ceil(self._window[0] + 60.0 - now))
                return self._status(
                    429,
                    _error_body(f"Rate limit reached for requests per min (RPM): Limit {self.rpm_limit}",
                                "requests", "rate_limit_exceeded"),
                    headers={"Retry-After": str(wait)},
                )
            self._window.append(now)
        await self._delay()
        if self.gate is not None:
            await self.gate.wait()
        text = self._answer(messages)
        self.served += 1
        extra: dict[str, Any] = {}
        finish = "stop"
        content: str | None = text
        if self.think == "closed":
            content = f"<think>\n{_draft(messages)}\n</think>\n\n{text}"
        elif self.think == "close_only":
            content = f"{_draft(messages)}\n</think>\n\n{text}"
        elif self.think == "unclosed":
            content, finish = f"<think>\n{_draft(messages)}\n", "length"
        elif self.think == "field":
            extra = {"reasoning_content": _draft(messages), "reasoning": _draft(messages)}
        elif self.think is not None:
            raise ValueError(f"unknown think style {self.think!r}; known: {', '.join(THINK_STYLES)}")
        return self._reply(body, messages, Failure.reply(content, finish, extra=extra))

    def _reply(self, body: dict[str, Any], messages: Messages, reply: Failure) -> web.Response:
        """A 200 in the OpenAI shape, with ``usage``, carrying ``reply``'s content."""
        self.status_counts[200] += 1
        prompt_tokens = sum(_rough_tokens(str(m.get("content", ""))) for m in messages)
        completion_tokens = _rough_tokens(reply.content or "")
        choices = [] if reply.no_choices else [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.content, **(reply.extra or {})},
            "finish_reason": reply.finish_reason,
        }]
        return web.json_response({
            "id": f"chatcmpl-fake-{self.calls}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        })

    async def _delay(self) -> None:
        latency = self.latency
        seconds = self._rng.uniform(*latency) if isinstance(latency, tuple) else latency
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _fail(self, request: web.Request, failure: Failure) -> web.StreamResponse:
        if failure.kind == "drop":
            self.status_counts["drop"] += 1
            assert request.transport is not None
            request.transport.close()
            # The client sees the connection close with no response; aiohttp
            # then has nothing to write to.
            raise asyncio.CancelledError
        if failure.kind == "hang":
            self.status_counts["hang"] += 1
            # Longer than any client timeout a test uses, but ends when the fake stops.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 30.0)
            return self._status(504, _error_body("hung", "timeout", None))
        headers: dict[str, str] = {}
        if failure.retry_after is not None:
            if failure.retry_after_date:
                from email.utils import formatdate
                headers["Retry-After"] = formatdate(time.time() + failure.retry_after, usegmt=True)
            else:
                headers["Retry-After"] = f"{failure.retry_after:g}"
        if failure.retry_after_ms is not None:
            headers["retry-after-ms"] = f"{failure.retry_after_ms:g}"
        body = failure.body or _error_body(
            failure.message or _DEFAULT_MESSAGES.get(failure.status, "error"),
            "server_error" if failure.status >= 500 else "invalid_request_error",
            failure.code,
        )
        return self._status(failure.status, body, headers=headers)

    def _status(self, status: int, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> web.Response:
        self.status_counts[status] += 1
        return web.json_response(body, status=status, headers=headers)

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    def _unauthorised(self, request: web.Request) -> web.Response:
        # Like OpenAI: the message shows only the ends of the key it got.
        got = request.headers.get("Authorization", "").removeprefix("Bearer ")
        shown = f"{got[:3]}***{got[-2:]}" if len(got) > 8 else "***"
        return self._status(401, _error_body(
            f"Incorrect API key provided: {shown}. You can find your API key in your account settings.",
            "invalid_request_error", "invalid_api_key",
        ))

    # -- answers -----------------------------------------------------------

    def _answer(self, messages: Messages) -> str:
        if self.responder is not None:
            return self.responder(messages)
        return self.default_responder(messages)

    def default_responder(self, messages: Messages) -> str:
        """Questions for a question-writer prompt (from the passage given, for the
        passage writer's), a grounded answer or the marker for the local
        backend's answer prompt, one question for a follow-up prompt,
        otherwise a short echo. Every aspect question is new."""
        text = "\n".join(str(m.get("content", "")) for m in messages)
        user = next((str(m.get("content", "")) for m in reversed(messages)
                     if m.get("role") == "user"), text)
        identity = self._identity(messages, user)
        if identity is not None:
            return identity
        ask = _ZH_ASK.search(user) or _EN_ASK.search(user)
        if ask is not None:
            n = int(ask.group("n"))
            zh = ask.re is _ZH_ASK
            start = self._take(n)
            shape = next(self._shape_cycle) if self.shape == "mixed" else self.shape
            return format_questions(make_questions(start, n, zh=zh), shape)
        passage = _PASSAGE.search(user)
        if passage is not None:
            m = _PASSAGE_N.search(user)
            n = int((m.group("n") or m.group("en")) if m else 3)
            shape = next(self._shape_cycle) if self.shape == "mixed" else self.shape
            zh_prompt = _is_cjk(_PASSAGE.sub("", text))
            return format_questions(passage_questions(passage.group("passage"), n, zh_prompt=zh_prompt), shape)
        rag = _RAG.search(user)
        if rag is not None and _RAG_MARKER in user:
            return grounded_answer(rag.group("material"), rag.group("question").strip())
        if _FOLLOWUP.search(text):
            zh = _is_cjk(text)
            k = self._take(1)
            words = _ZH_WORDS if zh else _EN_WORDS
            templates = _ZH_FOLLOWUPS if zh else _EN_FOLLOWUPS
            a, b = words[k % _N], words[(k // _N + k + 1) % _N]
            return templates[k % len(templates)].format(a=a, b=b)
        return f"fake answer {next(self._counter)}: {user[:40]}"

    def _identity(self, messages: Messages, user: str) -> str | None:
        """Identity questions for an identity question-writer prompt, an answer
        in the assistant's voice for an identity answer prompt, else None.
        Like a real model: a question list repeats itself once and slips in a
        question naming another model; every ``identity_slip_every``-th answer
        claims to be another model."""
        system = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        ask = _ID_ZH_ASK.search(user) or _ID_EN_ASK.search(user)
        if ask is not None:
            lang = "zh" if ask.re is _ID_ZH_ASK else "en"
            kind = _identity_kind(ask.group("what"))
            openers = _ID_ZH_OPENERS if lang == "zh" else _ID_EN_OPENERS
            cores = (_ID_ZH_CORES if lang == "zh" else _ID_EN_CORES)[kind]
            start = self._take(int(ask.group("n")))
            qs = []
            for k in range(start, start + int(ask.group("n"))):
                core = cores[k % len(cores)]
                opener = openers[(k // len(cores)) % len(openers)]
                q = opener + core
                qs.append(q[0].upper() + q[1:])
            qs[-1:] = [qs[0], _ID_NOISE[lang]]  # a repeat and an off-limits one, as models do
            shape = next(self._shape_cycle) if self.shape == "mixed" else self.shape
            return format_questions(qs, shape)
        facts = _ID_ZH_FACTS.search(system) or _ID_EN_FACTS.search(system)
        if facts is None:
            return None
        lang = "zh" if facts.re is _ID_ZH_FACTS else "en"
        self.identity_answers += 1
        if self.identity_slip_every and self.identity_answers % self.identity_slip_every == 0:
            return _ID_SLIPS[lang]
        name, author = facts.group("name").strip(), (facts.group("author") or "").strip()
        kind = _identity_kind(user)
        if lang == "zh":
            made = f"由{author}开发的" if author else ""
            body = {
                "who": f"你好！我是{name}，{made}AI助手，很高兴认识你。",
                "abilities": f"我是{name}，我可以回答你在我专长领域里的各种问题，帮你了解背后的故事和知识。",
                "maker": f"我是{name}，" + (f"由{author}开发。" if author else "一个AI助手。"),
                "limits": f"我是{name}，我只擅长自己专长领域的问题，不能联网查询实时信息，也可能出错。",
                "greeting": f"你好呀！我是{name}，有什么想了解的尽管问我吧。",
            }[kind]
        else:
            made = f", made by {author}" if author else ""
            body = {
                "who": f"Hi! I'm {name}, an AI assistant{made}. Nice to meet you.",
                "abilities": f"I'm {name}. I can answer your questions about my field and tell you "
                             "the stories and background behind it.",
                "maker": f"I'm {name}" + (f", and I was made by {author}." if author else ", an AI assistant."),
                "limits": f"I'm {name}. I only know my own field well, I can't browse the web, "
                          "and I can make mistakes.",
                "greeting": f"Hello! I'm {name}. Ask me anything you'd like to know.",
            }[kind]
        return body

    def _take(self, n: int) -> int:
        start = next(self._counter)
        for _ in range(n - 1):
            next(self._counter)
        return start


_DEFAULT_MESSAGES = {
    500: "The server had an error while processing your request.",
    502: "Bad gateway.",
    503: "Server Overloaded",
    504: "Gateway timeout.",
}


def _parse_latency(text: str) -> float | tuple[float, float]:
    if "-" in text:
        lo, hi = text.split("-", 1)
        return float(lo), float(hi)
    return float(text)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeLLM(
        api_key=args.api_key,
        latency=_parse_latency(args.latency),
        rpm_limit=args.rpm_limit,
        quota_after=args.quota_after,
        quota_style=args.quota_style,
        shape=args.shape,
        strict_models=not args.any_model,
        seed=args.seed,
        first_question=args.first_question,
        think=args.think,
        refuse_every=args.refuse_every,
        refusal_style=args.refusal_style,
    )
    if args.model:
        fake.models = list(args.model)
    if args.refuse_prompts:
        # Like a real content filter: the same prompt is refused every time it is sent.
        n = args.refuse_prompts
        fake.refuse_if = lambda messages: zlib.crc32(json.dumps(messages).encode()) % n == 0
    url = await fake.start(args.port)
    print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()
        print(json.dumps({"calls": fake.calls, "served": fake.served,
                          "peak_in_flight": fake.peak_in_flight,
                          "status_counts": {str(k): v for k, v in fake.status_counts.items()}}),
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible LLM API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", default="0", help="seconds, or a range like 0.05-0.2")
    parser.add_argument("--api-key", default="sk-fake")
    parser.add_argument("--model", action="append", help="model the server offers (repeatable)")
    parser.add_argument("--any-model", action="store_true", help="accept any model name")
    parser.add_argument("--rpm-limit", type=int, default=None)
    parser.add_argument("--quota-after", type=int, default=None)
    parser.add_argument("--quota-style", choices=QUOTA_STYLES, default="openai")
    parser.add_argument("--shape", choices=(*SHAPES, "mixed"), default="python")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--think", choices=THINK_STYLES, default=None,
                        help="every reply carries reasoning this way")
    parser.add_argument("--refuse-every", type=int, default=None,
                        help="refuse every Nth chat request with a content-safety refusal")
    parser.add_argument("--refusal-style", choices=REFUSAL_STYLES, default="deepseek")
    parser.add_argument("--refuse-prompts", type=int, default=None, metavar="N",
                        help="refuse about one prompt in N, the same prompts every time they are sent")
    parser.add_argument("--first-question", type=int, default=0,
                        help="number of the first generated question (a fresh fake that must not repeat another's)")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
