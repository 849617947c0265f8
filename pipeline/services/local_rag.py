"""The embedded answer backend: BM25 over the corpus, answers by the LLM.

For users with an LLM key and no HuixiangDou server. :class:`LocalAnswerer`
implements :class:`pipeline.services.answerer.Answerer`, so the QA graph, ledgers, gate
and report are the same as on the HuixiangDou path.

Index. The pretraining stage's chunks of ``data_dir`` (:func:`pipeline.corpus.discover`,
:func:`~pipeline.corpus.probe`, :func:`~pipeline.corpus.make_splitter`,
:func:`~pipeline.corpus.iter_chunks`, with the ``[pretrain]`` settings, verbatim
repeats dropped), each kept with its source file (relative to ``data_dir``),
scored with BM25 (``bm25s``). One tokenizer serves mixed text: Han runs are
cut by jieba's search mode (overlapping words, so 发售日期 also matches
发售 and 日期), other runs become lower-cased words (NFKC first, so full-width
letters match ASCII); a short list of question and function words is dropped.

Cache. ``<out_dir>/state/local_index/`` holds the bm25s index with the chunks
and ``fingerprint.json``. The fingerprint hashes every file's relative path,
size and sha256 (the manifest's fields) with the splitter and tokenizer
settings; a different fingerprint rebuilds the index. The fingerprint file is
removed before a rebuild and written last, so an interrupted build is never
loaded.

Retrieval. Raw BM25 scores grow with the number and rarity of the question's
words found, and rarity itself grows with the corpus (IDF is a logarithm of
its size), so one fixed floor would mean different things on a 20-chunk and a
20,000-chunk corpus. Scores are therefore divided by the IDF of a word found in
a single passage: 1.0 is what one such rare word, once, in a passage of
average length scores. A passage must pass two bars: ``score >= [rag]
min_score`` (an absolute floor that keeps off-topic questions out) and
``score >= min_relative_score * best`` (drop passages much weaker than the
best one); then the best ``top_k``, trimmed to ``max_context_chars``. On the
reference corpus (6,000 chunks) the best passage of on-topic questions scored
about 0.65 to 1.9, of off-topic ones 0.25 to 0.7: the floor is a cheap first filter, and
the model's "not in the material" reply the second.

Outcomes (HuixiangDou's conventions):

    no passage above the bars         -> skipped, "no passage above threshold" (no LLM call)
    the answer proper holds the marker -> skipped, "not in the material" (the model's
                                         reasoning never reaches here: the client removed it)
    an unusable reply (empty, all reasoning, cut off)
                                      -> failed,  "LLM reply unusable (<kind>)"
    the provider's content filter     -> refused, "refused by the provider: <its words>"
    RetryableError after the retries  -> failed,  "LLM error: ..."
    otherwise                         -> answered, "success", refs = the passages' files
    QuotaExhausted, FatalServiceError -> raised: the graph stops or waits

``[rag] backend = "auto"`` chooses between this and HuixiangDou:
:mod:`pipeline.services.backend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import shutil
import time
import unicodedata
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm25s
import numpy as np

from pipeline.corpus import discover, iter_chunks, make_splitter, probe
from pipeline.errors import ContentRefused, InputError, RetryableError, UndecodableFile, UnusableReply
from pipeline.jsonl import atomic_writer, dumps_line
from pipeline.services.llm import LLMClient
from pipeline.services.replies import REFUSED
from pipeline.services.answerer import Outcome
from pipeline.settings import SEED_SEPARATORS, RagSettings, Settings

with warnings.catch_warnings():
    # jieba 0.42 imports pkg_resources, which newer setuptools deprecates
    # (DeprecationWarning, then UserWarning); harmless, and nothing we can fix.
    warnings.filterwarnings(
        "ignore", message="pkg_resources is deprecated as an API", module="jieba"
    )
    import jieba

__all__ = [
    "INDEX_DIR",
    "NOT_IN_MATERIAL",
    "IndexInfo",
    "LocalAnswerer",
    "LocalIndex",
    "Passage",
    "answer_messages",
    "build_index",
    "corpus_fingerprint",
    "is_not_in_material",
    "load_or_build_index",
    "rare_word_score",
    "render_passages",
    "select_passages",
    "tokenize",
]

log = logging.getLogger(__name__)

INDEX_DIR = "local_index"
FINGERPRINT_NAME = "fingerprint.json"
BM25_DIR = "bm25"
SERVER = "local"
NOT_IN_MATERIAL = "NOT_IN_MATERIAL"
# Bump when tokenisation, passage text or the index layout changes: old caches are rebuilt.
INDEX_VERSION = 2

NO_PASSAGE = "no passage above threshold"
NOT_IN_MATERIAL_STATE = "not in the material"
UNUSABLE = "LLM reply unusable"
SUCCESS = "success"

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A Han run, or a run of other letters and digits (underscore is a separator).
_RUNS = re.compile(rf"[{_HAN}]+|[^\W_{_HAN}]+")
# Question and function words: present in nearly every question and many
# passages, they would lift off-topic questions over the threshold.
_STOPWORDS_ZH = frozenset(
    "的 了 是 在 和 与 及 以及 或 或者 吗 呢 吧 啊 呀 么 什么 哪 哪些 哪个 哪里 哪儿 怎么 怎样 怎么样 "
    "如何 为什么 为何 谁 多少 几 有 有没有 没有 这 那 这个 那个 这些 那些 个 一个 中 里 上 下 请 "
    "一下 可以 能 能够 会 被 把 对 也 都 就 又 还 之 其 而 等 关于 是否 你 我 他 她 它 们 吗？".split()
)
# bm25s's short English list lacks the question words themselves.
_STOPWORDS_EN = frozenset(bm25s.stopwords.STOPWORDS_EN) | frozenset(
    "what which who whom whose when where why how does did do done can could would should "
    "tell please about me you your i my we our were has had s t".split()
)
# Replies that mean "not in the material" even without the marker.
_NOT_FOUND_PHRASES = ("资料中没有相关信息", "资料中没有相关内容", "材料中没有相关信息")
_TRIM = " \t\r\n\"'`“”‘’「」『』*.。!！,，:：()（）[]【】"


# --------------------------------------------------------------------------- pure pieces


def tokenize(text: str) -> list[str]:
    """Search tokens of mixed Chinese and English text (see the module docstring)."""
    tokens: list[str] = []
    for run in _RUNS.findall(unicodedata.normalize("NFKC", text).casefold()):
        if _is_han(run[0]):  # a run is all Han or has none
            tokens.extend(t for t in jieba.cut_for_search(run) if t not in _STOPWORDS_ZH)
        elif run not in _STOPWORDS_EN:
            tokens.append(run)
    return tokens


def _is_han(ch: str) -> bool:
    o = ord(ch)
    return 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF


def select_passages(
    scores: Sequence[float] | np.ndarray,
    *,
    top_k: int,
    min_score: float,
    min_relative_score: float,
) -> list[int]:
    """Indices of the passages to use, best first: at most ``top_k``, each
    scoring at least ``min_score`` and at least ``min_relative_score`` times
    the best score. Ties keep index order. Empty when none qualifies."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.size == 0:
        return []
    best = float(arr.max())
    floor = max(min_score, min_relative_score * best)
    if best <= 0 or best < floor:
        return []
    keep = np.flatnonzero(arr >= floor)
    # Stable sort on the negated score: best first, ties in corpus order.
    order = keep[np.argsort(-arr[keep], kind="stable")]
    return [int(i) for i in order[:top_k]]


@dataclass(frozen=True, slots=True)
class Passage:
    """One chunk of the corpus and the file it came from (relative to ``data_dir``)."""

    source: str
    text: str


def render_passages(passages: Sequence[Passage], max_chars: int) -> tuple[str, tuple[str, ...]]:
    """The passages as numbered blocks naming their files, best first, within
    ``max_chars`` characters of passage text (the first passage is cut to fit;
    later ones that do not fit are left out). Returns the text and the
    distinct source files of the passages it holds, in order."""
    blocks: list[str] = []
    sources: dict[str, None] = {}
    left = max_chars
    for n, p in enumerate(passages, 1):
        text = p.text
        if len(text) > left:
            if blocks:
                break
            text = text[:left]
        left -= len(text)
        blocks.append(f"[{n}] ({p.source})\n{text}")
        sources.setdefault(p.source, None)
        if left <= 0:
            break
    return "\n\n".join(blocks), tuple(sources)


def answer_messages(
    prompt: str, system_prompt: str, topic: str, passages: str, question: str
) -> list[dict[str, str]]:
    """The chat messages for one answer: the conversation's system prompt (so
    answers speak in the dataset's persona) and the answer prompt with its
    placeholders filled. Plain replacement, not ``str.format``: a user's
    prompt may hold other braces, and the material certainly may."""
    user = (
        prompt.replace("{topic}", topic)
        .replace("{marker}", NOT_IN_MATERIAL)
        .replace("{question}", question)
        # Last, so braces inside the material are never taken for placeholders.
        .replace("{passages}", passages)
    )
    messages = [{"role": "user", "content": user}]
    if system_prompt.strip():
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def is_not_in_material(reply: str) -> bool:
    """Whether a model's reply says the material lacks the answer: it holds
    the marker anywhere (a model that answers and then adds the marker is not
    trusted either), or it is only one of the Chinese "no such information"
    phrases."""
    flat = reply.upper().replace(" ", "_")
    if NOT_IN_MATERIAL in flat:
        return True
    return reply.strip(_TRIM) in _NOT_FOUND_PHRASES


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True, slots=True)
class IndexInfo:
    """What was indexed, for the probe line and the logs."""

    chunks: int
    files: int
    skipped: tuple[tuple[str, str], ...]
    cached: bool
    seconds: float

    def line(self) -> str:
        how = "cached" if self.cached else f"built in {self.seconds:.1f} s"
        text = f"local index: {self.chunks} chunks from {self.files} files ({how})"
        if self.skipped:
            text += f"; {len(self.skipped)} files skipped: " + ", ".join(
                f"{p} ({r})" for p, r in self.skipped
            )
        return text


def rare_word_score(passages: int) -> float:
    """BM25's IDF (bm25s' default "lucene" variant) of a word found in one
    passage out of ``passages``: the unit of :meth:`LocalIndex.scores`."""
    return math.log(1.0 + (passages - 1 + 0.5) / (1 + 0.5))


class LocalIndex:
    """A BM25 index over passages; :meth:`search` is cheap enough for the event loop."""

    def __init__(self, retriever: bm25s.BM25, passages: Sequence[Passage]) -> None:
        self._retriever = retriever
        self.passages = list(passages)
        self._unit = rare_word_score(len(self.passages))

    def scores(self, query: str) -> np.ndarray:
        """The score of every passage for ``query``, in units of one rare word
        (see the module docstring); all zero when none of its words is in the corpus."""
        vocab = self._retriever.vocab_dict
        ids = [vocab[t] for t in tokenize(query) if t in vocab and t != ""]
        if not ids:
            return np.zeros(len(self.passages), dtype=np.float64)
        return np.asarray(self._retriever.get_scores(ids), dtype=np.float64) / self._unit

    def search(self, query: str, rag: RagSettings) -> list[tuple[Passage, float]]:
        """The passages that pass ``rag``'s bars, best first, with their scores."""
        scores = self.scores(query)
        chosen = select_passages(
            scores, top_k=rag.top_k, min_score=rag.min_score,
            min_relative_score=rag.min_relative_score,
        )
        return [(self.passages[i], float(scores[i])) for i in chosen]


def _relative(path: Path, root: Path) -> str:
    return path.name if root.is_file() else path.relative_to(root).as_posix()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class _FileEntry:
    path: Path
    rel: str
    size: int
    sha256: str
    encoding: str | None  # None: skipped, see reason
    reason: str = ""


def _survey(settings: Settings) -> list[_FileEntry]:
    """Every corpus file with the manifest's fields (size, sha256, encoding);
    undecodable or unreadable files are kept with their reason, so fixing one
    changes the fingerprint."""
    root = settings.data_dir
    entries: list[_FileEntry] = []
    for path in discover(root, settings.pretrain.patterns):
        rel = _relative(path, root)
        try:
            info = probe(path, settings.pretrain.bad_bytes_limit)
        except UndecodableFile as exc:
            log.warning("local index: skipped %s: %s", rel, exc.reason)
            entries.append(_FileEntry(path, rel, path.stat().st_size, _sha256_file(path), None,
                                      exc.reason))
            continue
        except OSError as exc:
            reason = f"cannot read ({exc.strerror})"
            log.warning("local index: skipped %s: %s", rel, reason)
            entries.append(_FileEntry(path, rel, -1, "", None, reason))
            continue
        entries.append(_FileEntry(path, rel, info.size, info.sha256, info.encoding))
    return entries


def _separators(settings: Settings) -> tuple[str, ...]:
    # As run.py's pretrain command: seed-compatible mode means the reference separators.
    p = settings.pretrain
    return SEED_SEPARATORS if p.seed_compatible else p.separators


def corpus_fingerprint(files: Iterable[tuple[str, int, str]], settings: Settings) -> str:
    """A hex digest of the corpus (relative path, size, sha256 per file) and
    everything else that shapes the index: splitter settings, patterns,
    tokenizer and index format versions."""
    p = settings.pretrain
    key = {
        "version": INDEX_VERSION,
        "bm25s": bm25s.__version__,
        "jieba": jieba.__version__,
        "chunk_size": p.chunk_size,
        "chunk_overlap": p.chunk_overlap,
        "separators": list(_separators(settings)),
        "seed_compatible": p.seed_compatible,
        "bad_bytes_limit": p.bad_bytes_limit,
        "patterns": list(p.patterns),
        "files": sorted([rel, size, sha] for rel, size, sha in files),
    }
    return hashlib.sha256(dumps_line(key)).hexdigest()


def _chunks(settings: Settings, entries: Sequence[_FileEntry]) -> Iterator[Passage]:
    p = settings.pretrain
    splitter = make_splitter(p.chunk_size, p.chunk_overlap, _separators(settings), p.seed_compatible)
    seen: set[bytes] = set()
    for e in entries:
        if e.encoding is None:
            continue
        for chunk in iter_chunks(e.path, splitter, encoding=e.encoding):
            # Verbatim repeats would fill top_k with one passage several times.
            digest = hashlib.blake2b(chunk.encode(), digest_size=8).digest()
            if chunk and digest not in seen:
                seen.add(digest)
                yield Passage(e.rel, chunk)


def build_index(settings: Settings, entries: Sequence[_FileEntry] | None = None) -> LocalIndex:
    """Chunk and index ``data_dir`` (no cache). Raises :class:`InputError`
    naming ``data_dir`` when it holds no usable text."""
    if entries is None:
        entries = _survey(settings)
    passages = list(_chunks(settings, entries))
    if not passages:
        raise InputError(
            f"{settings.data_dir}: no text to answer from (no readable files matching "
            f"{', '.join(settings.pretrain.patterns)}); set [paths] data_dir, or use "
            "[rag] backend = \"huixiangdou\""
        )
    retriever = bm25s.BM25()
    retriever.index([tokenize(p.text) for p in passages], show_progress=False)
    return LocalIndex(retriever, passages)


def _read_fingerprint(path: Path) -> dict[str, Any] | None:
    import orjson

    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _describe_change(old: dict[str, Any] | None, entries: Sequence[_FileEntry]) -> str:
    if old is None:
        return "no cached index"
    before = old.get("files") if isinstance(old.get("files"), dict) else {}
    now = {e.rel: e.sha256 for e in entries}
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    changed = sorted(r for r in set(now) & set(before) if now[r] != before[r])
    parts = [f"{len(xs)} {what} ({', '.join(xs[:3])}{' …' if len(xs) > 3 else ''})"
             for what, xs in (("changed", changed), ("added", added), ("removed", removed)) if xs]
    return "corpus " + "; ".join(parts) if parts else "settings or index format changed"


def load_or_build_index(settings: Settings) -> tuple[LocalIndex, IndexInfo]:
    """The index of ``data_dir``: loaded from ``<state>/local_index/`` when its
    fingerprint matches the corpus and settings, else built and saved there.
    Blocking (hashing, jieba, BM25): call it in a thread."""
    started = time.perf_counter()
    # Load jieba's dictionary (about a second) here, in the caller's thread,
    # not on the event loop at the first question. jieba announces it at
    # DEBUG on a stderr handler of its own; its log level is the only switch.
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    folder = settings.state_dir / INDEX_DIR
    fp_path = folder / FINGERPRINT_NAME
    entries = _survey(settings)
    fingerprint = corpus_fingerprint(((e.rel, e.size, e.sha256) for e in entries), settings)
    skipped = tuple((e.rel, e.reason) for e in entries if e.encoding is None)
    files = len(entries) - len(skipped)
    old = _read_fingerprint(fp_path)
    if old is not None and old.get("fingerprint") == fingerprint:
        try:
            retriever = bm25s.BM25.load(folder / BM25_DIR, load_corpus=True, show_progress=False)
            passages = [Passage(d["source"], d["text"]) for d in retriever.corpus]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("local index: cache in %s unreadable (%s); rebuilding", folder, exc)
        else:
            retriever.corpus = None  # kept once, as passages
            index = LocalIndex(retriever, passages)
            return index, IndexInfo(len(passages), files, skipped, True,
                                    time.perf_counter() - started)
    log.info("local index: building (%s)", _describe_change(old, entries))
    index = build_index(settings, entries)
    # The fingerprint goes first and comes back last: a build interrupted in
    # between leaves no fingerprint, so the half-written index is never loaded.
    with contextlib.suppress(FileNotFoundError):
        fp_path.unlink()
    shutil.rmtree(folder / BM25_DIR, ignore_errors=True)
    index._retriever.save(
        folder / BM25_DIR,
        corpus=[{"source": p.source, "text": p.text} for p in index.passages],
        show_progress=False,
        raise_on_serialization_error=True,
    )
    with atomic_writer(fp_path) as fh:
        fh.write(dumps_line({
            "fingerprint": fingerprint,
            "chunks": len(index.passages),
            "files": {e.rel: e.sha256 for e in entries},
            "built_at": time.time(),
        }))
    return index, IndexInfo(len(index.passages), files, skipped, False,
                            time.perf_counter() - started)


# --------------------------------------------------------------------------- answerers


class LocalAnswerer:
    """Answer questions from ``data_dir`` with BM25 passages and the LLM (an ``Answerer``)."""

    backend = "local"

    def __init__(self, settings: Settings, llm: LLMClient) -> None:
        self._settings = settings
        self._llm = llm
        # One question at a time per LLM call the client lets through at once.
        self.slots = settings.llm.concurrency
        self._index: LocalIndex | None = None
        self._lock = asyncio.Lock()
        self.info: IndexInfo | None = None

    async def _ensure_index(self) -> LocalIndex:
        async with self._lock:
            if self._index is None:
                self._index, self.info = await asyncio.to_thread(
                    load_or_build_index, self._settings
                )
            return self._index

    async def probe(self) -> str:
        """Load the cached index or build it (in a thread); describe it.
        Raises :class:`InputError` when ``data_dir`` holds no usable text."""
        await self._ensure_index()
        assert self.info is not None
        return self.info.line()

    async def ask(self, question: str) -> Outcome:
        """Answer one question from the material (see the module docstring for outcomes)."""
        started = time.monotonic()
        index = await self._ensure_index()
        rag = self._settings.rag
        hits = index.search(question, rag)
        if not hits:
            return Outcome(kind="skipped", state=NO_PASSAGE, server=SERVER, attempts=0,
                           seconds=time.monotonic() - started)
        text, refs = render_passages([p for p, _ in hits], rag.max_context_chars)
        messages = answer_messages(
            rag.answer_prompt, self._settings.conversations.system_prompt,
            self._settings.questions.topic, text, question,
        )
        try:
            completion = await self._llm.chat(messages, temperature=rag.temperature)
        except ContentRefused as exc:
            return Outcome(kind="refused", state=f"{REFUSED}: {exc.provider_message}", refs=refs,
                           server=SERVER, attempts=2, seconds=time.monotonic() - started)
        except UnusableReply as exc:
            return Outcome(kind="failed", state=f"{UNUSABLE} ({exc.kind})", refs=refs, server=SERVER,
                           attempts=2, seconds=time.monotonic() - started)
        except RetryableError as exc:
            return Outcome(kind="failed", state=f"LLM error: {exc}", refs=refs, server=SERVER,
                           attempts=self._llm.settings.max_retries + 1,
                           seconds=time.monotonic() - started)
        reply = completion.text
        common: dict[str, Any] = {
            "server": SERVER, "attempts": completion.attempts,
            "seconds": time.monotonic() - started,
        }
        if is_not_in_material(reply):
            return Outcome(kind="skipped", answer=reply, refs=refs, state=NOT_IN_MATERIAL_STATE,
                           **common)
        return Outcome(kind="answered", answer=reply, refs=refs, state=SUCCESS, **common)

    def stats(self) -> dict[str, dict[str, Any]]:
        """No servers to show: the LLM client's usage says it all."""
        return {}

    async def aclose(self) -> None:
        """Nothing to release: the LLM client belongs to the caller."""
