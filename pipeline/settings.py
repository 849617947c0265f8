"""Settings: ``settings.toml`` -> frozen dataclasses, loaded once.

Every setting has a default here, so a user's file holds only what it changes.
An unknown section or key, a wrong type or an out-of-range value raises
:class:`SettingsError` naming the file, the key and what was expected.
Secrets never live in the file: the LLM key is read from the environment
variable that ``[llm] api_key_env`` names, and is masked in every repr.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import tomllib
import typing
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import SettingsError
from pipeline.presets import PRESETS

__all__ = [
    "CHINESE_SEPARATORS",
    "SEED_SEPARATORS",
    "ConversationSettings",
    "HuixiangdouSettings",
    "IdentitySettings",
    "LLMSettings",
    "PathSettings",
    "PretrainSettings",
    "QuestionSettings",
    "RagSettings",
    "RunSettings",
    "Secret",
    "Settings",
    "check_pieces",
    "load_settings",
]

# The reference script's separators, typo (" ，") and repeated "。" included:
# `--seed-compatible` must reproduce its chunks exactly.
SEED_SEPARATORS: tuple[str, ...] = (
    "\n\n", "\n", " ", "。", " ，", ".", ",", "\u200b", "，", "、", "．", "。", "",
)

# Chinese-aware order: paragraphs, lines, sentence ends, clause marks, spaces,
# then characters (no zero width space: the reader removes it). Sentence
# marks rank above the space so a stray space does
# not cut a Chinese paragraph mid-sentence.
CHINESE_SEPARATORS: tuple[str, ...] = (
    "\n\n", "\n",
    "。", "！", "？", "；", "…",
    "! ", "? ", "; ", ". ",
    "，", "、", "：", ", ", ": ",
    " ", "",
)


def _meta(
    doc: str,
    *,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    check: str | None = None,
) -> dict[str, Any]:
    """A field's documentation and what the loader checks of its value:
    ``ge``/``le``/``gt`` bound a number; ``check`` names a check of
    :data:`_CHECKS` (a non-empty text, a list of distinct non-empty texts,
    a URL, a file name, regular expressions)."""
    return {"doc": doc, "ge": ge, "le": le, "gt": gt, "check": check}


class Secret:
    """A string that never shows itself in a repr, str or f-string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


@dataclass(frozen=True, slots=True)
class PathSettings:
    data_dir: str = field(default="data", metadata=_meta("folder of domain text", check="text"))
    out_dir: str = field(default="out", metadata=_meta("where outputs and state go", check="text"))


@dataclass(frozen=True, slots=True)
class PretrainSettings:
    chunk_size: int = field(default=1024, metadata=_meta("characters per chunk", ge=1))
    chunk_overlap: int = field(default=50, metadata=_meta("characters shared by neighbours", ge=0))
    separators: tuple[str, ...] = field(
        default=CHINESE_SEPARATORS, metadata=_meta("splitter separators, tried in order", check="list")
    )
    patterns: tuple[str, ...] = field(
        default=("*.txt", "*.md"), metadata=_meta("file name patterns to read", check="names")
    )
    seed_compatible: bool = field(
        default=False, metadata=_meta("reproduce the reference script's chunks exactly")
    )
    bad_bytes_limit: int = field(
        default=16, metadata=_meta("bad bytes a file may hold and still be read as text", ge=0)
    )
    output_name: str = field(
        default="incremental_pretraining.jsonl", metadata=_meta("file name under out_dir", check="file_name")
    )


@dataclass(frozen=True, slots=True)
class LLMSettings:
    base_url: str = field(
        default="https://api.siliconflow.cn/v1", metadata=_meta("OpenAI-compatible API root", check="url")
    )
    model: str = field(default="deepseek-ai/DeepSeek-V2.5", metadata=_meta("model name", check="text"))
    api_key_env: str = field(
        default="SILICONFLOW_API_KEY", metadata=_meta("environment variable holding the key", check="text")
    )
    rpm: int = field(default=60, metadata=_meta("requests per minute", ge=1))
    tpm: int = field(default=100_000, metadata=_meta("tokens per minute", ge=1))
    concurrency: int = field(default=8, metadata=_meta("calls in flight at most", ge=1))
    timeout_s: float = field(default=120.0, metadata=_meta("seconds per call", gt=0))
    max_retries: int = field(default=6, metadata=_meta("retries of a retryable error", ge=0))
    backoff_base_s: float = field(default=1.0, metadata=_meta("first backoff delay", gt=0))
    backoff_max_s: float = field(default=60.0, metadata=_meta("longest backoff delay", gt=0))
    temperature: float = field(default=0.7, metadata=_meta("sampling temperature", ge=0, le=2))
    max_tokens: int = field(default=1024, metadata=_meta("completion tokens at most", ge=1))
    refusal_window: int = field(
        default=20, metadata=_meta("last calls over which refusals are counted", ge=1)
    )
    max_refused_share: float = field(
        default=0.5,
        metadata=_meta("share of refused calls in refusal_window that stops the run", gt=0, le=1),
    )
    price_input_per_m: float = field(
        default=1.33, metadata=_meta("price per million input tokens", ge=0)
    )
    price_output_per_m: float = field(
        default=1.33, metadata=_meta("price per million output tokens", ge=0)
    )
    api_key: Secret = field(default=Secret(""), metadata=_meta("read from api_key_env; never set"))


@dataclass(frozen=True, slots=True)
class HuixiangdouSettings:
    urls: tuple[str, ...] = field(
        default=("http://127.0.0.1:23333",), metadata=_meta("HuixiangDou servers", check="urls")
    )
    endpoint: Literal["inference", "stream"] = field(
        default="inference", metadata=_meta("'inference' or 'stream'")
    )
    concurrency_per_server: int = field(
        default=1, metadata=_meta("requests in flight per server", ge=1)
    )
    timeout_s: float = field(default=600.0, metadata=_meta("seconds per request", gt=0))
    rpm: int = field(default=0, metadata=_meta("requests per minute over all servers; 0 = no limit", ge=0))
    max_retries: int = field(default=3, metadata=_meta("retries of a 500 or dropped connection", ge=0))
    backoff_base_s: float = field(default=1.0, metadata=_meta("first backoff delay", gt=0))
    failures_before_rest: int = field(
        default=3, metadata=_meta("consecutive failures before a server is rested", ge=1)
    )
    rest_s: float = field(default=60.0, metadata=_meta("seconds a failing server is rested at most", ge=0))
    recheck_s: float = field(
        default=10.0, metadata=_meta("seconds between questions sent to a resting server to see it back", gt=0)
    )
    instant_rejection_s: float = field(
        default=0.1,
        metadata=_meta("an LLM-judged rejection faster than this is HuixiangDou's own LLM failing; 0 = off", ge=0),
    )
    down_timeout_s: float = field(
        default=900.0,
        metadata=_meta("seconds every server may be down before the run stops", ge=0),
    )


@dataclass(frozen=True, slots=True)
class QuestionSettings:
    topic: str = field(default="黑神话：悟空", metadata=_meta("what the questions are about", check="text"))
    language: Literal["zh", "en"] = field(default="zh", metadata=_meta("prompt preset: 'zh' or 'en'"))
    aspects: tuple[str, ...] = field(
        default=(
            "游戏概述", "章节与故事情节", "主要角色", "人物剧情梳理", "游戏世界观", "建筑与环境",
            "战斗系统", "游戏玩法", "艺术与音乐", "文化内涵", "市场影响", "彩蛋、网络梗",
        ),
        metadata=_meta("aspects to ask about", check="distinct"),
    )
    per_aspect: int = field(default=10, metadata=_meta("questions wanted per aspect", ge=1))
    batch_size: int = field(default=10, metadata=_meta("questions asked for per LLM call", ge=1))
    max_stale_rounds: int = field(
        default=3, metadata=_meta("rounds without a new question before giving up", ge=1)
    )
    system_prompt: str = field(default="", metadata=_meta("question-writer system prompt; '' = preset"))
    user_prompt: str = field(default="", metadata=_meta("question-writer user prompt; '' = preset"))
    min_chars: int = field(
        default=4, metadata=_meta("shortest accepted question, in characters (zh)", ge=1)
    )
    max_chars: int = field(
        default=60, metadata=_meta("longest accepted question, in characters (zh)", ge=1)
    )
    min_words: int = field(
        default=3, metadata=_meta("shortest accepted question, in words (en)", ge=1)
    )
    max_words: int = field(
        default=30, metadata=_meta("longest accepted question, in words (en)", ge=1)
    )
    near_duplicate_threshold: float = field(
        default=0.7, metadata=_meta("character n-gram Jaccard above which questions are duplicates", gt=0, le=1)
    )
    # Questions written from the corpus's own passages (pipeline/qa/passages.py).
    source: Literal["aspects", "corpus", "both"] = field(
        default="aspects", metadata=_meta("where questions come from: 'aspects', 'corpus' or 'both'")
    )
    per_passage: int = field(default=3, metadata=_meta("questions asked for per passage at most", ge=1))
    passage_size: int = field(default=400, metadata=_meta("characters per passage at most", ge=1))
    passage_overlap: int = field(default=0, metadata=_meta("characters shared by neighbouring passages", ge=0))
    max_passages: int = field(default=0, metadata=_meta("passages asked at most; 0 = every passage", ge=0))
    passage_seed: int = field(default=0, metadata=_meta("seed of the selection under max_passages"))
    passage_system_prompt: str = field(default="", metadata=_meta("passage question-writer system prompt; '' = preset"))
    passage_user_prompt: str = field(default="", metadata=_meta("passage question-writer user prompt; '' = preset"))
    check_passage_terms: bool = field(
        default=False, metadata=_meta("flag in the report answers naming none of their passage's key terms")
    )


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    system_prompt: str = field(default="", metadata=_meta("system prompt of the first turn; '' = preset"))
    min_turns: int = field(default=1, metadata=_meta("turns per conversation at least", ge=1))
    max_turns: int = field(default=1, metadata=_meta("turns per conversation at most", ge=1))
    keep_short: bool = field(
        default=True,
        metadata=_meta("keep a conversation that ended with fewer answered turns than min_turns"),
    )
    followup_prompt: str = field(default="", metadata=_meta("follow-up writer prompt; '' = preset"))
    min_answer_chars: int = field(default=10, metadata=_meta("shortest accepted answer", ge=0))
    max_answer_chars: int = field(default=4000, metadata=_meta("longest accepted answer", ge=1))
    strip_prefixes: tuple[str, ...] = field(
        default=(
            r"^(根据|依据|按照|结合|基于)(您|你)?(所?提供的|已知的?|现有的?|给定的|上述的?|相关的?)?(参考)?的?"
            r"(材料|资料|信息|内容|文档|知识库|上下文)(中的信息|中的内容|中的描述|中|里|所述|来看|可知)?[，,：:]?\s*",
            r"^(?i:(Based on|According to|From) the (provided |given |above |reference )?"
            r"(materials?|information|documents?|context|passages?|sources?|text))[,:]?\s*",
        ),
        metadata=_meta("regular expressions of boilerplate lead-ins removed where a sentence starts",
                       check="regexes"),
    )
    refusal_patterns: tuple[str, ...] = field(
        default=(
            r"抱歉|对不起|很遗憾|遗憾的是",
            r"无法(准确|直接|确切|具体|完整)?(地)?(回答|提供|确定|找到|得知|判断)",
            r"不知道|不清楚",
            r"(没有|未能?|并未|并没有)(找到|检索到|查到|获得)",
            r"(材料|资料|文档|上下文|知识库)(中|里|内)?[，,]?\s*(也|还|并)?(没有|未|不)(包含|涉及|提及|提到|提供|说明|记载|给出|明确|具体|直接|详细)",
            r"^(但|不过|然而)?[，,]?\s*(并)?(没有|未)(直接|明确|具体|详细)?(提及|提到|说明|记载|涉及)",
            r"没有(关于|相关|有关)[^。！？]{0,30}(信息|资料|内容|记载)",
            r"(信息|资料)(不足|有限|不够)",
            r"(材料|资料|文档|上下文)(为空|是空的|缺失)",
            r"(没有|未|并未|并没有)在?(您|你)?(所?提供的|给定的|参考)?的?(材料|资料|文档|文本|上下文)(中|里)(被)?"
            r"(明确|直接|具体|详细)?地?(提及|提到|说明|记载|列出|描述|涉及|给出)",
            r"(并未|并没有|没有|未)被?(直接|明确|具体|详细)地?(提及|提到|说明|记载|描述)",
            r"(?i:\b(sorry|apologi[sz]e|unfortunately)\b)",
            r"(?i:\bI (don'?t|do not|cannot|can'?t|am unable to|could not|couldn'?t) (know|answer|find|determine|provide|say))",
            r"(?i:\b(not enough|insufficient|no( relevant| specific)?) information\b)",
            r"(?i:\bnot (mentioned|provided|specified|stated|covered|given|addressed|discussed|included) in the "
            r"(provided |given |above |reference )?(documents?|context|materials?|passages?|sources?|text|information))",
            r"(?i:\b(documents?|context|materials?|passages?|sources?|text|information)\b[^.]{0,40}"
            r"\b(do(es)? not|don'?t|doesn'?t|did not|never) (mention|specify|say|state|contain|include|provide|cover|address|discuss))",
        ),
        metadata=_meta("regular expressions of refusal sentences (apologies, gaps in the material)",
                       check="regexes"),
    )
    refusal_share: float = field(
        default=0.5,
        metadata=_meta("share of an answer's characters in refusal sentences that makes it a refusal",
                       gt=0, le=1),
    )
    material_talk: Literal["rewrite", "reject"] = field(
        default="rewrite", metadata=_meta("'rewrite' (where safe, else reject) or 'reject'")
    )
    material_patterns: tuple[str, ...] = field(
        default=(
            r"(您|你|所)提供的(信息|内容)|提供的(参考)?(材料|资料|文档|上下文)|(给定|给出|上述|现有)的?(材料|资料|文档)",
            r"参考(材料|资料|文档)",
            r"(材料|资料|文档|上下文|知识库)(中|里|内|当中|所述|显示|表明|指出|提到|提及|描述|记载|说明|介绍|主要|并未|并没有|没有|未)",
            r"(?i:\bthe (provided |given |above |reference |supplied )(documents?|context|materials?|passages?|excerpts?|sources?|texts?|information)\b)",
            # Not "in the context of", "made from the materials": those are English, not sourcing.
            r"(?i:\b(according to|based on) the (documents?|context|materials?|passages?|excerpts?|sources?)\b)",
            r"(?i:\b(in|from) the (documents?|passages?|excerpts?)\b)",
            r"(?i:\bthe (documents?|context|materials?|passages?)\b (says?|states?|mentions?|shows?|indicates?|notes?|do(es)? not|don'?t|doesn'?t)\b)",
        ),
        metadata=_meta("regular expressions of sentences that talk about 'the material'", check="regexes"),
    )
    material_rewrites: tuple[str, ...] = field(
        default=(
            # "材料中提到，X" / "此外，资料显示：“X”" -> "X" / "此外，“X”"
            r"(^|(?<=[，,]))(在|从)?(您|你)?(所?提供的|给定的|参考)?的?(材料|资料|文档)(中|里)?[，,]?\s*(也|还)?有?"
            r"(提到|显示|指出|表明|记载|说明|介绍|提及)(了)?([，,：:][ \t]*|(?=[“「『\"]))",
            # "以下是根据提供的材料对X的概述" -> "以下是对X的概述"
            r"(根据|依据|结合)(您|你)?((所?提供的|给定的|参考)的?(材料|资料|文档)"
            r"(中的信息|中的内容|中的描述|中提供的信息|中提到的)?(?![中里])|(材料|资料|文档)"
            r"(中的信息|中的内容|中的描述|中提供的信息|中提到的))[，,]?",
            r"(根据|依据|按照|据)(知识库|资料|材料|文档|参考资料)的?(记载|显示|所述|介绍|描述)[，,]",
            r"^(在|从)(您|你)?(所?提供的|给定的|参考)?的?(材料|资料|文档)(中|里)[，,]\s*",
            r"^(?i:the (provided |given )?(documents?|context|materials?|passages?|text) "
            r"(says?|states?|mentions?|notes?|shows?|indicates?|explains?) that)\s+",
            r",? (?i:(as|like) (mentioned|stated|described|noted) in the (provided |given )?"
            r"(documents?|context|materials?|passages?|text))(?=[,.])",
        ),
        metadata=_meta("regular expressions of material talk removed with material_talk = 'rewrite'",
                       check="regexes"),
    )
    reference_headers: tuple[str, ...] = field(
        default=(
            # "参考资料：", "**References:**", "**来源**：", "## 参考文献"; not "References to the novel..."
            r"^\s*(#{1,6}\s*)?(\*\*)?(参考资料|参考文献|参考来源|资料来源|引用来源|引用|出处|"
            r"(?i:references?|sources?|citations?))\s*([:：]\s*(\*\*)?|\*\*\s*[:：]?|(?=\s*$))",
        ),
        metadata=_meta("regular expressions of a references header line; the list under it goes to refs",
                       check="regexes"),
    )


    @property
    def dataset_min_turns(self) -> int:
        """Answered turns a conversation needs to enter the dataset."""
        return 1 if self.keep_short else self.min_turns

@dataclass(frozen=True, slots=True)
class RagSettings:
    backend: Literal["huixiangdou", "local", "auto"] = field(
        default="auto", metadata=_meta("'auto', 'huixiangdou' or 'local'")
    )
    # The local backend's knobs (pipeline/services/local_rag.py); HuixiangDou ignores them.
    top_k: int = field(default=4, metadata=_meta("passages sent to the LLM at most", ge=1))
    min_score: float = field(
        default=0.5, metadata=_meta("score a passage needs at least, in rare-word units", ge=0)
    )
    min_relative_score: float = field(
        default=0.5, metadata=_meta("fraction of the best passage's score a passage needs", ge=0, le=1)
    )
    max_context_chars: int = field(
        default=4000, metadata=_meta("characters of passages in one prompt at most", ge=1)
    )
    temperature: float = field(default=0.3, metadata=_meta("answering temperature", ge=0, le=2))
    answer_prompt: str = field(
        default="", metadata=_meta("local answer prompt; '' = preset")
    )


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    name: str = field(default="", metadata=_meta("the assistant's name; required by `identity`"))
    author: str = field(default="", metadata=_meta("who made the assistant: a person or organisation"))
    purpose: str = field(
        default="", metadata=_meta("what the assistant is for; '' = what [conversations] system_prompt says")
    )
    languages: tuple[Literal["zh", "en"], ...] = field(
        default=("zh", "en"), metadata=_meta("languages of the records: 'zh', 'en'")
    )
    records: int = field(default=100, metadata=_meta("records wanted, over all languages", ge=1))
    batch_size: int = field(default=10, metadata=_meta("questions asked for per LLM call", ge=1))
    max_question_chars: int = field(default=60, metadata=_meta("longest accepted question", ge=1))
    max_answer_chars: int = field(default=400, metadata=_meta("longest accepted answer", ge=1))
    max_attempts: int = field(
        default=3, metadata=_meta("answers asked for one question before it is given up", ge=1)
    )
    other_names: tuple[str, ...] = field(
        default=(), metadata=_meta("more model or company names an answer must not use")
    )
    output_name: str = field(default="identity.jsonl", metadata=_meta("file name under out_dir"))


@dataclass(frozen=True, slots=True)
class RunSettings:
    on_quota: Literal["stop", "wait"] = field(
        default="stop", metadata=_meta("on exhausted quota: 'stop' (exit 75) or 'wait'")
    )
    quota_wait_s: float = field(default=3600.0, metadata=_meta("seconds to wait before probing", gt=0))
    grace_s: float = field(default=30.0, metadata=_meta("seconds in-flight calls may finish in on stop", ge=0))
    fsync: Literal["line", "batch", "never"] = field(
        default="batch", metadata=_meta("'line', 'batch' or 'never'")
    )
    fsync_interval_s: float = field(
        default=1.0, metadata=_meta("with fsync 'batch': least seconds between ledger syncs", ge=0)
    )
    max_answer_attempts: int = field(
        default=3, metadata=_meta("runs that may retry a failed question", ge=1)
    )
    queue_size: int = field(default=256, metadata=_meta("questions buffered between stages", ge=1))
    progress_interval_s: float = field(
        default=30.0, metadata=_meta("seconds between plain progress lines", gt=0)
    )


@dataclass(frozen=True, slots=True)
class Settings:
    paths: PathSettings = PathSettings()
    pretrain: PretrainSettings = PretrainSettings()
    llm: LLMSettings = LLMSettings()
    huixiangdou: HuixiangdouSettings = HuixiangdouSettings()
    questions: QuestionSettings = QuestionSettings()
    conversations: ConversationSettings = ConversationSettings()
    rag: RagSettings = RagSettings()
    identity: IdentitySettings = IdentitySettings()
    run: RunSettings = RunSettings()
    source: str = "<defaults>"

    @property
    def data_dir(self) -> Path:
        return Path(self.paths.data_dir)

    @property
    def out_dir(self) -> Path:
        return Path(self.paths.out_dir)

    @property
    def state_dir(self) -> Path:
        return self.out_dir / "state"

    def command(self, *words: str) -> str:
        """The command line that runs ``run.py *words`` on these same settings,
        for a message to print: ``--settings`` is given unless they are the
        default file (or the built-in defaults), so the command never falls
        back to other settings on this ``out_dir``."""
        given = "" if self.source in ("<defaults>", "settings.toml") else f" --settings {shlex.quote(self.source)}"
        return f"python run.py{given} {' '.join(words)}".rstrip()


_SECTIONS: dict[str, type] = {
    "paths": PathSettings,
    "pretrain": PretrainSettings,
    "llm": LLMSettings,
    "huixiangdou": HuixiangdouSettings,
    "questions": QuestionSettings,
    "conversations": ConversationSettings,
    "rag": RagSettings,
    "identity": IdentitySettings,
    "run": RunSettings,
}
# Keys the loader fills itself; a file may not set them.
_INTERNAL = {("llm", "api_key")}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is tuple:
        if isinstance(value, list):
            inner = typing.get_args(tp)[0]
            return tuple(_coerce(v, inner, where) for v in value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise SettingsError(f"{where}: expected {_describe(tp)}, got {value!r}")


def _check_range(value: Any, meta: typing.Mapping[str, Any], where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not math.isfinite(value):  # NaN passes every comparison; inf is no setting's intent
        raise SettingsError(f"{where}: expected a finite number, got {value!r}")
    if meta.get("ge") is not None and value < meta["ge"]:
        raise SettingsError(f"{where}: expected a value >= {meta['ge']}, got {value!r}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        raise SettingsError(f"{where}: expected a value > {meta['gt']}, got {value!r}")
    if meta.get("le") is not None and value > meta["le"]:
        raise SettingsError(f"{where}: expected a value <= {meta['le']}, got {value!r}")


def _text(value: str, where: str, what: str = "a non-empty string") -> None:
    if not value.strip():
        raise SettingsError(f"{where}: expected {what}, got {value!r}")


def _url(value: str, where: str) -> None:
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{where}: expected an http:// or https:// URL, got {value!r}")


def _names(values: tuple[str, ...], where: str, each: Callable[[str, str], None] = _text) -> None:
    _list(values, where)
    _distinct(values, where, each)


def _distinct(values: tuple[str, ...], where: str, each: Callable[[str, str], None] = _text) -> None:
    seen: set[str] = set()
    for value in values:
        each(value, where)
        if value.strip() in seen:
            raise SettingsError(f"{where}: {value!r} is listed twice")
        seen.add(value.strip())


def _list(values: tuple[str, ...], where: str) -> None:
    if not values:
        raise SettingsError(f"{where}: expected at least one entry, got []")


def _file_name(value: str, where: str) -> None:
    # Outputs stay inside out_dir: a bare file name, no folder, no way up.
    if not value.strip() or value in (".", "..") or "/" in value or "\\" in value:
        raise SettingsError(f"{where}: expected a file name inside out_dir (no folders), got {value!r}")


def _regexes(values: tuple[str, ...], where: str) -> None:
    for n, pattern in enumerate(values, 1):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SettingsError(
                f"{where}: entry {n}, {pattern!r}, is not a valid regular expression: {exc}"
            ) from None


# What a field's ``check`` (see :func:`_meta`) asks of its value.
_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "text": _text,
    "url": _url,
    "urls": lambda v, w: _names(v, w, _url),
    "names": _names,
    "distinct": _distinct,
    "list": _list,
    "file_name": _file_name,
    "regexes": _regexes,
}


def _build_section(name: str, cls: type, table: Any, source: str) -> Any:
    if not isinstance(table, dict):
        raise SettingsError(f"{source}: [{name}] must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        where = f"{source}: [{name}] {key}"
        if key not in fields or (name, key) in _INTERNAL:
            known = ", ".join(k for k in fields if (name, k) not in _INTERNAL)
            raise SettingsError(f"{source}: unknown key [{name}] {key}; known keys: {known}")
        value = _coerce(raw, hints[key], where)
        _check_range(value, fields[key].metadata, where)
        check = fields[key].metadata.get("check")
        if check is not None:
            _CHECKS[check](value, where)
        values[key] = value
    return cls(**values)


def check_pieces(size: int, overlap: int, *, size_name: str, overlap_name: str) -> None:
    """The one rule for text cut into pieces of ``size`` characters, each
    sharing ``overlap`` with the next: ``size >= 1`` and ``0 <= overlap < size``.
    Raises :class:`SettingsError` naming the key or flag (``size_name``,
    ``overlap_name``) that is wrong."""
    if size < 1:
        raise SettingsError(f"{size_name}: expected a value >= 1, got {size}")
    if not 0 <= overlap < size:
        raise SettingsError(
            f"{overlap_name}: expected a value >= 0 and less than {size_name.rsplit(' ', 1)[-1]} "
            f"({size}), got {overlap}"
        )


def _cross_check(s: Settings) -> None:
    src = s.source
    check_pieces(s.pretrain.chunk_size, s.pretrain.chunk_overlap,
                 size_name=f"{src}: [pretrain] chunk_size", overlap_name=f"{src}: [pretrain] chunk_overlap")
    if s.conversations.min_turns > s.conversations.max_turns:
        raise SettingsError(
            f"{src}: [conversations] min_turns: expected at most max_turns "
            f"({s.conversations.max_turns}), got {s.conversations.min_turns}"
        )
    for unit in ("chars", "words"):
        low, high = getattr(s.questions, f"min_{unit}"), getattr(s.questions, f"max_{unit}")
        if low > high:
            raise SettingsError(
                f"{src}: [questions] min_{unit}: expected at most max_{unit} ({high}), got {low}"
            )
    if not s.questions.aspects and s.questions.source != "corpus":
        raise SettingsError(
            f"{src}: [questions] aspects: expected at least one aspect (or source = \"corpus\")"
        )
    check_pieces(s.questions.passage_size, s.questions.passage_overlap,
                 size_name=f"{src}: [questions] passage_size",
                 overlap_name=f"{src}: [questions] passage_overlap")
    if "{passage}" not in s.questions.passage_user_prompt:
        raise SettingsError(
            f"{src}: [questions] passage_user_prompt: expected the placeholder {{passage}}"
        )
    if not s.identity.languages:
        raise SettingsError(f"{src}: [identity] languages: expected at least one of 'zh', 'en'")
    if len(set(s.identity.languages)) != len(s.identity.languages):
        raise SettingsError(f"{src}: [identity] languages: each language once, got {list(s.identity.languages)}")
    name = s.identity.output_name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise SettingsError(f"{src}: [identity] output_name: expected a plain file name under out_dir, got {name!r}")
    missing = [p for p in ("{passages}", "{question}", "{marker}") if p not in s.rag.answer_prompt]
    if missing:
        raise SettingsError(
            f"{src}: [rag] answer_prompt: expected the placeholders {{passages}}, {{question}} "
            f"and {{marker}}; missing {', '.join(missing)}"
        )


def parse_settings(
    data: dict[str, Any], source: str = "<defaults>", environ: typing.Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from a parsed TOML document."""
    sections: dict[str, Any] = {}
    for name, table in data.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            raise SettingsError(
                f"{source}: unknown section [{name}]; known sections: {', '.join(_SECTIONS)}"
            )
        sections[name] = _build_section(name, cls, table, source)
    settings = Settings(**sections, source=source)
    env = os.environ if environ is None else environ
    key = env.get(settings.llm.api_key_env, "").strip()
    settings = dataclasses.replace(
        settings, llm=dataclasses.replace(settings.llm, api_key=Secret(key))
    )
    settings = _apply_presets(settings)
    _cross_check(settings)
    return settings


def _apply_presets(s: Settings) -> Settings:
    """Fill prompts left empty with the language preset."""
    preset = PRESETS[s.questions.language]
    q = dataclasses.replace(
        s.questions,
        system_prompt=s.questions.system_prompt or preset.question_system,
        user_prompt=s.questions.user_prompt or preset.question_user,
        passage_system_prompt=s.questions.passage_system_prompt or preset.passage_system,
        passage_user_prompt=s.questions.passage_user_prompt or preset.passage_user,
        # With source = "corpus" no aspect is asked: the aspects list is left empty.
        aspects=() if s.questions.source == "corpus" else s.questions.aspects,
    )
    c = dataclasses.replace(
        s.conversations,
        system_prompt=s.conversations.system_prompt
        or preset.system_prompt.format(topic=s.questions.topic),
        followup_prompt=s.conversations.followup_prompt or preset.followup,
    )
    r = dataclasses.replace(s.rag, answer_prompt=s.rag.answer_prompt or preset.rag_answer)
    i = dataclasses.replace(s.identity, purpose=s.identity.purpose or c.system_prompt)
    return dataclasses.replace(s, questions=q, conversations=c, rag=r, identity=i)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Settings:
    """Load settings from ``path``; with no path, ``settings.toml`` in the
    working directory when it exists, else the built-in defaults."""
    if path is None:
        default = Path("settings.toml")
        if not default.exists():
            return parse_settings({}, environ=environ)
        path = default
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SettingsError(f"{path}: settings file not found") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read settings file ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: settings file is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    return parse_settings(data, source=str(path), environ=environ)

