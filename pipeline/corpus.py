"""The corpus: discover and decode text files, cut them into chunks, and write
XTuner incremental-pretraining JSONL plus a manifest.

Pure pieces (reused by the local RAG index): :func:`discover`,
:func:`detect_encoding`, :func:`decode`, :func:`make_splitter`,
:func:`cut_point`, :func:`pretrain_record`. Streaming I/O: :func:`probe`,
:func:`iter_blocks`, :func:`iter_chunks`. The stage driver: :func:`run_pretrain`.

Decoding. UTF-8 (with or without a BOM), UTF-16/32 with a BOM, and anything
else charset-normalizer recognises (GB18030/GBK, Big5, BOM-less UTF-16...).
The UTF-8 BOM is dropped in *both* modes: the reference script kept it inside
its first chunk, which is a decoding defect, not part of its chunking. Newlines
are normalised (``\\r\\n`` and ``\\r`` become ``\\n``), exactly as Python's text
mode did for the reference. A file that is binary (NUL characters, control
noise) or cannot be decoded end to end raises :class:`UndecodableFile`; the
stage reports it by name and skips it.

Splitting. LangChain's ``RecursiveCharacterTextSplitter`` counting characters,
chunks stripped. The default (Chinese-aware) mode keeps each punctuation mark
on the sentence it ends (``keep_separator="end"``), and also keeps a run of
marks and closing quotes (``……``, ``？！``, ``。”``) with it; it always ends
with the ``""`` separator so no chunk can exceed ``chunk_size``.
``seed_compatible`` builds the reference script's splitter exactly (its
separators, ``keep_separator=True``), so on the same text it gives the same
chunks.

Bounded memory. A file is read in blocks of ``block_chars`` characters; the
text is cut at the last paragraph (else line, else sentence) boundary in the
later half of the buffer and each piece is split on its own. Overlap is not
carried across a cut, but no text is lost or reordered. A file no longer than
one block (every file of the reference corpus with the default 4 M) is split
in one piece, so seed-compatible chunks then equal the reference's exactly.

Outputs. ``<save_path>`` (JSONL, written atomically) and
``<save_path>.manifest.json`` (also atomic, written after the JSONL): settings,
per source file its path relative to the root, size, sha256, encoding, chunk
count and the output lines its chunks occupy, and the skipped files with reasons.
"""

from __future__ import annotations

import codecs
import fnmatch
import hashlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_text_splitters import RecursiveCharacterTextSplitter

from pipeline.cleantext import clean_text
from pipeline.errors import InputError, UndecodableFile
from pipeline.settings import check_pieces
from pipeline.jsonl import atomic_writer, dumps_line

__all__ = [
    "DEFAULT_BLOCK_CHARS",
    "PretrainSummary",
    "SourceInfo",
    "cut_point",
    "decode",
    "detect_encoding",
    "discover",
    "iter_blocks",
    "iter_chunks",
    "iter_spans",
    "make_splitter",
    "manifest_path",
    "pretrain_record",
    "probe",
    "run_pretrain",
]

log = logging.getLogger(__name__)

# Larger than every file of the reference corpus (the longest holds 3.6 M
# characters), so seed-compatible output matches the reference there, while a
# buffer stays in the tens of megabytes.
DEFAULT_BLOCK_CHARS = 4_000_000

_READ_BYTES = 1 << 20
# Enough for charset-normalizer to be sure, small enough to stay quick.
_SNIFF_BYTES = 64 * 1024

_BOMS: tuple[tuple[bytes, str], ...] = (
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Detected legacy encodings widened to the superset Python can decode, so a
# rare character outside the detected subset does not sink the file.
_WIDEN = {"gb2312": "gb18030", "gbk": "gb18030", "big5": "big5hkscs", "ascii": "utf-8"}

# Sentence and clause marks, and what may trail them and still belong to the
# sentence: repeated marks and closing quotes or brackets.
_MARKS = "。！？；…!?;.，、：,:．"
_TRAILERS_CLOSE = "”’」』）》〉】〕)]\"'"
# C0/C1 control characters other than tab, newlines, \v and \f.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")

# Control characters a text may hold beyond 1% of its length.
_CONTROLS_ALLOWED = 8
# Bad bytes a file may hold and still be read as text (each becomes U+FFFD and
# is reported): a truncated last character, a stray byte from a bad copy. Past
# it the file is skipped as not text. [pretrain] bad_bytes_limit.
BAD_BYTES_LIMIT = 16
# How many bad-byte offsets a report names.
BAD_OFFSETS_KEPT = 5


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What :func:`probe` learns about a file before it is split."""

    size: int
    sha256: str
    encoding: str
    bad_bytes: int = 0  # replaced by U+FFFD; at most the limit
    bad_offsets: tuple[int, ...] = ()  # byte offsets of the first few


@dataclass(frozen=True, slots=True)
class PretrainSummary:
    """The outcome of one pretraining run."""

    files_read: int
    files_skipped: list[tuple[str, str]]
    chunks: int
    duplicates: int
    characters: int
    seconds: float
    save_path: Path = field(default=Path())
    manifest_path: Path = field(default=Path())
    # Files read with bad bytes replaced: (path, count, first offsets).
    bad_bytes: list[tuple[str, int, tuple[int, ...]]] = field(default_factory=list)
    # Invisible/control characters by category: normalised, or kept when seed_compatible.
    cleaned: dict[str, int] = field(default_factory=dict)
    seed_compatible: bool = False

    def line(self) -> str:
        """The one-line summary printed at the end of the stage."""
        parts = [f"pretrain: {self.files_read} files read, {len(self.files_skipped)} skipped"]
        if self.bad_bytes:
            named = ", ".join(f"{p} {n}" for p, n, _ in self.bad_bytes[:3])
            more = ", ..." if len(self.bad_bytes) > 3 else ""
            parts.append(f"{len(self.bad_bytes)} with bad bytes replaced ({named}{more})")
        parts.append(f"{self.chunks} chunks, {self.duplicates} duplicates dropped, "
                     f"{self.characters} characters")
        if self.cleaned:
            what = "kept (seed-compatible)" if self.seed_compatible else "normalised"
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.cleaned.items(), key=lambda kv: -kv[1]))
            parts.append(f"{sum(self.cleaned.values())} invisible/control characters {what} ({counts})")
        return ", ".join(parts) + f", {self.seconds:.2f} s -> {self.save_path}"


# --------------------------------------------------------------------------- discovery


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    # Case-insensitive so NOTES.TXT from a Windows machine is not silently skipped.
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def discover(root: str | os.PathLike[str], patterns: Sequence[str]) -> list[Path]:
    """Files under ``root`` whose names match ``patterns``, recursively, in a
    fixed order (sorted by their path parts relative to ``root``).

    Hidden files and folders (names starting with ``.``) are skipped; folder
    symlinks are not followed, so a link loop cannot hang the run. A ``root``
    that is a file is returned as is, whatever its name. A missing ``root``
    raises :class:`InputError` naming it.
    """
    base = Path(root)
    if base.is_file():
        return [base]
    if not base.is_dir():
        raise InputError(f"{base}: no such file or folder")
    found: list[Path] = []
    for folder, dirs, files in os.walk(base, onerror=_walk_error):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        for name in files:
            if not _hidden(name) and _matches(name, patterns):
                path = Path(folder, name)
                if path.is_file():
                    found.append(path)
    found.sort(key=lambda p: p.relative_to(base).parts)
    return found


def _walk_error(exc: OSError) -> None:
    log.warning("cannot list %s: %s", exc.filename, exc.strerror)


# --------------------------------------------------------------------------- decoding


class _BadBytes:
    """Where a decoder met bytes it could not decode: ``(start, end)`` byte
    ranges, relative to the decoder's input until :meth:`shift` places them
    in the file. Past ``limit`` bytes the file is not text, and decoding stops."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ranges: list[tuple[int, int]] = []
        self.count = 0
        self._placed = 0

    def note(self, exc: UnicodeDecodeError) -> None:
        self.count += exc.end - exc.start
        if self.count > self.limit:
            raise exc
        self.ranges.append((exc.start, exc.end))

    def shift(self, base: int) -> None:
        """Add ``base`` to the ranges noted since the last shift."""
        for i in range(self._placed, len(self.ranges)):
            a, b = self.ranges[i]
            self.ranges[i] = (a + base, b + base)
        self._placed = len(self.ranges)

    def offsets(self) -> tuple[int, ...]:
        return tuple(a for a, _ in self.ranges[:BAD_OFFSETS_KEPT])


_SINK: ContextVar[_BadBytes | None] = ContextVar("corpus_bad_bytes", default=None)


def _replace_and_note(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    sink = _SINK.get()
    if sink is not None:
        sink.note(exc)
    return "\ufffd", exc.end


# A codec error handler: bad bytes become U+FFFD and are noted in the current sink.
_NOTE_BAD = "pipeline.corpus.note-bad"
codecs.register_error(_NOTE_BAD, _replace_and_note)


def _looks_binary(text: str) -> bool:
    # Text holds only a trace of control characters (a stray NUL or ESC is
    # cleaned away; a short file may hold a few); binary data is full of them.
    controls = sum(1 for _ in _CONTROL.finditer(text))
    return controls > _CONTROLS_ALLOWED + len(text) // 100


def detect_encoding(head: bytes, bad_bytes_limit: int = BAD_BYTES_LIMIT) -> str | None:
    """The Python codec name for a file that starts with ``head``, or ``None``
    when no encoding fits (binary data). The caller still checks the decoded
    text for control characters.

    BOMs win; then UTF-8 (a multi-byte character cut by the end of ``head`` is
    allowed, and so are up to ``bad_bytes_limit`` bad bytes among many good
    multi-byte characters: UTF-8 with a few damaged bytes, not a legacy
    encoding); then charset-normalizer; then UTF-8 again when its bad bytes
    are few (ASCII text with a stray byte, which charset-normalizer refuses).
    """
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head, final=False)
    bad = text.count("\ufffd") - head.count("\ufffd".encode())
    if bad == 0:
        return "utf-8"
    multibyte = len(head) - len(text)  # bytes beyond one per character
    if bad <= bad_bytes_limit and multibyte >= 20 * bad:
        return "utf-8"
    # Imported here: it costs ~20 ms of start-up and UTF-8 corpora never need it.
    import charset_normalizer

    best = charset_normalizer.from_bytes(head).best()
    if best is None:
        return "utf-8" if bad <= bad_bytes_limit else None
    # Binary data that some legacy codec happens to accept is caught after
    # decoding (control characters), see _looks_binary.
    name = codecs.lookup(best.encoding).name
    return _WIDEN.get(name, name)


def _not_text(path: str | os.PathLike[str], encoding: str, bad: _BadBytes) -> UndecodableFile:
    first = ", ".join(str(o) for o in bad.offsets())
    return UndecodableFile(
        path, f"not {encoding} text: more than {bad.limit} bad bytes (first at byte {first})"
    )


def decode(
    raw: bytes, path: str | os.PathLike[str] = "<bytes>", bad_bytes_limit: int = BAD_BYTES_LIMIT
) -> str:
    """Decode a whole file's bytes: BOM removed, newlines normalised to ``\\n``,
    up to ``bad_bytes_limit`` bad bytes replaced by U+FFFD.

    Raises :class:`UndecodableFile` naming ``path`` for binary or undecodable input.
    """
    encoding = detect_encoding(raw[:_SNIFF_BYTES], bad_bytes_limit)
    if encoding is None:
        raise UndecodableFile(path, "binary or unknown encoding")
    bad = _BadBytes(bad_bytes_limit)
    token = _SINK.set(bad)
    try:
        text = raw.decode(encoding, errors=_NOTE_BAD)
    except UnicodeDecodeError:
        raise _not_text(path, encoding, bad) from None
    finally:
        _SINK.reset(token)
    if _looks_binary(text):
        raise UndecodableFile(path, "binary content (control characters)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def probe(path: str | os.PathLike[str], bad_bytes_limit: int = BAD_BYTES_LIMIT) -> SourceInfo:
    """Read a file once in blocks: its size, sha256 and encoding, where its
    bad bytes are (at most ``bad_bytes_limit``; they read as U+FFFD), and
    proof that it decodes end to end (so a binary tail skips the file before
    any of its chunks is written). Raises :class:`UndecodableFile`."""
    digest = hashlib.sha256()
    size = 0
    bad = _BadBytes(bad_bytes_limit)
    with open(path, "rb") as fh:
        first = fh.read(_READ_BYTES)
        encoding = detect_encoding(first[:_SNIFF_BYTES], bad_bytes_limit)
        if encoding is None:
            raise UndecodableFile(path, "binary or unknown encoding")
        decoder = codecs.getincrementaldecoder(encoding)(errors=_NOTE_BAD)
        block = first
        token = _SINK.set(bad)
        try:
            while True:
                digest.update(block)
                final = len(block) < _READ_BYTES
                # Bytes of a character cut by the previous block wait in the
                # decoder; the decoder's offsets count from the first of them.
                base = size - len(decoder.getstate()[0])
                try:
                    text = decoder.decode(block, final=final)
                except UnicodeDecodeError:
                    bad.shift(base)
                    raise _not_text(path, encoding, bad) from None
                bad.shift(base)
                if _looks_binary(text):
                    raise UndecodableFile(path, "binary content (control characters)")
                size += len(block)
                if final:
                    break
                block = fh.read(_READ_BYTES)
        finally:
            _SINK.reset(token)
    return SourceInfo(size=size, sha256=digest.hexdigest(), encoding=encoding,
                      bad_bytes=bad.count, bad_offsets=bad.offsets())


# --------------------------------------------------------------------------- splitting


def _keep_with_sentence(sep: str) -> str:
    """Regex for a literal separator: a punctuation separator also takes the
    marks and closing quotes that follow it, so they stay with their sentence."""
    core = sep.rstrip()
    if not core or any(ch not in _MARKS for ch in core):
        return re.escape(sep)
    tail = sep[len(core):]
    trail = (
        f"[{re.escape(_MARKS)}]*[{re.escape(_TRAILERS_CLOSE)}]*"
    )
    return re.escape(core) + trail + re.escape(tail)


class _Splitter(RecursiveCharacterTextSplitter):
    """LangChain's recursive splitter, with its last resort made linear.

    When no separator but ``""`` is left for a piece, LangChain splits it
    into single characters (a list of ~80-byte strings, 330 MB for a 4 M
    character piece) and merges them one by one, copying the chunk's list at
    every character dropped from its front (1.5 ms a chunk). A file that is
    one long line with no separator took 91 s and 584 MB for 200 MB. Here
    such a piece is cut into windows of ``chunk_size`` characters stepping by
    ``chunk_size - chunk_overlap``, stripped as LangChain strips, which are
    the very chunks LangChain makes there (a test compares them).
    """

    def _split_text(self, text: str, separators: list[str]) -> list[str]:
        if self._chunk_size > 1 and _only_characters_left(text, separators, self._is_separator_regex):
            return self._windows(text)
        return super()._split_text(text, separators)

    def _windows(self, text: str) -> list[str]:
        size, step = self._chunk_size, self._chunk_size - self._chunk_overlap
        chunks = []
        start = 0
        # LangChain's merge emits a chunk when the next character would not
        # fit, then keeps the last chunk_overlap characters; its final chunk
        # is whatever is left, even when that is only the overlap.
        while len(text) - start > size:
            chunks.append(text[start:start + size])
            start += step
        chunks.append(text[start:])
        if self._strip_whitespace:
            chunks = [c.strip() for c in chunks]
        return [c for c in chunks if c]


def _only_characters_left(text: str, separators: Sequence[str], is_regex: bool) -> bool:
    """Whether LangChain would split ``text`` into single characters: the
    first separator that is empty or found in ``text`` is the empty one."""
    for sep in separators:
        if not sep:
            return True
        if re.search(sep if is_regex else re.escape(sep), text):
            return False
    return False


def make_splitter(
    chunk_size: int,
    chunk_overlap: int,
    separators: Sequence[str],
    seed_compatible: bool,
) -> RecursiveCharacterTextSplitter:
    """The splitter for either mode (see the module docstring).

    ``seed_compatible=True`` uses ``separators`` literally with LangChain's
    defaults, as the reference did; pass ``SEED_SEPARATORS`` for its chunks.
    Raises :class:`SettingsError` when the sizes break
    :func:`pipeline.settings.check_pieces`.
    """
    check_pieces(chunk_size, chunk_overlap, size_name="chunk_size", overlap_name="chunk_overlap")
    if seed_compatible:
        return _Splitter(
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            separators=list(separators),
            length_function=len,
        )
    seps = [s for s in dict.fromkeys(separators) if s]
    patterns = [_keep_with_sentence(s) for s in seps] + [""]
    return _Splitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        separators=patterns,
        keep_separator="end",
        is_separator_regex=True,
        length_function=len,
    )


_SENTENCE_END = re.compile(r"[。！？!?…．.]")


def cut_point(buf: str) -> int:
    """Where to cut a buffer of text so each side can be split alone: just
    after the last paragraph break in its later half, else the last line
    break, else the last sentence end, else its end. Cutting only in the later
    half bounds what is carried over to at most half a buffer."""
    floor = len(buf) // 2
    for sep in ("\n\n", "\n"):
        i = buf.rfind(sep, floor)
        if i >= 0:
            return i + len(sep)
    last = None
    for m in _SENTENCE_END.finditer(buf, floor):
        last = m
    return last.end() if last is not None else len(buf)


def iter_blocks(
    path: str | os.PathLike[str],
    encoding: str,
    block_chars: int = DEFAULT_BLOCK_CHARS,
    *,
    clean: bool = True,
) -> Iterator[str]:
    """A file's decoded, newline-normalised text in pieces that together are
    the whole text, in order, each cut at a boundary by :func:`cut_point`,
    each with invisible and control characters normalised unless ``clean``
    is false (:func:`pipeline.cleantext.clean_text`). Bad bytes read as
    U+FFFD (:func:`probe` counts them and refuses a file with too many). At
    most about three blocks of text are held at once. A file no longer than
    ``block_chars`` comes as one piece."""
    pieces = _raw_blocks(path, encoding, block_chars)
    return (clean_text(p)[0] for p in pieces) if clean else pieces


def _raw_blocks(path: str | os.PathLike[str], encoding: str, block_chars: int) -> Iterator[str]:
    if block_chars < 1:
        raise ValueError(f"block_chars must be at least 1, got {block_chars}")
    with open(path, encoding=encoding, errors="replace", newline=None) as fh:
        buf = ""
        block = fh.read(block_chars)
        while block:
            ahead = fh.read(block_chars)
            buf += block
            if ahead:
                cut = cut_point(buf)
                if cut:
                    yield buf[:cut]
                    buf = buf[cut:]
            block = ahead
        if buf:
            yield buf


def iter_chunks(
    path: str | os.PathLike[str],
    splitter: RecursiveCharacterTextSplitter,
    *,
    encoding: str | None = None,
    block_chars: int = DEFAULT_BLOCK_CHARS,
    clean: bool = True,
) -> Iterator[str]:
    """The chunks of one file, in order, with bounded memory (see
    :func:`iter_blocks`), invisible and control characters normalised unless
    ``clean`` is false (:func:`pipeline.cleantext.clean_text`). ``encoding``
    is detected when not given; raises :class:`UndecodableFile` for binary or
    undecodable files."""
    if encoding is None:
        encoding = probe(path).encoding
    for piece in iter_blocks(path, encoding, block_chars, clean=clean):
        yield from splitter.split_text(piece)


def iter_spans(
    path: str | os.PathLike[str],
    splitter: RecursiveCharacterTextSplitter,
    encoding: str,
    *,
    overlap: int,
    block_chars: int = DEFAULT_BLOCK_CHARS,
) -> Iterator[tuple[int, int, str]]:
    """:func:`iter_chunks` with where each chunk lies: ``(start, end, chunk)``,
    character offsets into the file's decoded, newline-normalised and cleaned
    text (:func:`iter_blocks`), so ``text[start:end] == chunk``. ``overlap`` is the splitter's
    ``chunk_overlap``: a chunk starts at most that far before the previous
    one ends."""
    base = 0
    for piece in iter_blocks(path, encoding, block_chars):
        cursor = 0
        for chunk in splitter.split_text(piece):
            # Chunks are stripped pieces of the piece, in order, each starting
            # no earlier than the previous one's end less the overlap.
            start = piece.find(chunk, cursor)
            if start < 0:  # pragma: no cover - the splitter only cuts and strips
                raise ValueError(f"{path}: a chunk is not in its text")
            cursor = max(start + 1, start + len(chunk) - overlap)
            yield base + start, base + start + len(chunk), chunk
        base += len(piece)


def pretrain_record(chunk: str) -> dict[str, Any]:
    """One XTuner incremental-pretraining record."""
    return {"conversation": [{"input": "", "output": chunk}]}


# --------------------------------------------------------------------------- the stage


def manifest_path(save_path: str | os.PathLike[str]) -> Path:
    """Where the manifest of ``save_path`` goes: ``<save_path>.manifest.json``."""
    p = Path(save_path)
    return p.with_name(p.name + ".manifest.json")


def _digest(chunk: str) -> int:
    # 64-bit digests keep the seen-set small (about 70 bytes a chunk); a false
    # duplicate needs a collision, odds about n²/2⁶⁵ (1e-8 at a million chunks).
    return int.from_bytes(hashlib.blake2b(chunk.encode(), digest_size=8).digest(), "big")


def _relative(path: Path, root: Path) -> str:
    if root.is_file():
        return path.name
    return path.relative_to(root).as_posix()


def run_pretrain(
    root: Path,
    save_path: Path,
    *,
    chunk_size: int,
    chunk_overlap: int,
    separators: Sequence[str],
    patterns: Sequence[str],
    seed_compatible: bool,
    bad_bytes_limit: int = BAD_BYTES_LIMIT,
    block_chars: int = DEFAULT_BLOCK_CHARS,
    on_file: Callable[[str, int], None] | None = None,
) -> PretrainSummary:
    """Discover, decode, clean and split every file under ``root`` and write
    the pretraining JSONL to ``save_path`` and its manifest beside it.

    Both files are replaced atomically: a re-run never appends, and an
    interruption leaves the previous files intact. Binary files, and files
    with more than ``bad_bytes_limit`` bad bytes, are logged by name, skipped
    and counted; fewer bad bytes are replaced by U+FFFD and reported with
    their offsets. Invisible and control characters are normalised and
    counted (:mod:`pipeline.cleantext`); with ``seed_compatible`` they are
    kept, as the reference kept them, and counted as kept. Verbatim repeated
    chunks are dropped and counted. ``on_file(relative_path, chunks)`` is
    called after each file is written (progress display).

    Raises :class:`InputError` naming ``root`` when it is missing, holds no
    matching file, or yields no text at all (every file skipped or empty);
    the previous output then stays as it was.
    """
    started = time.perf_counter()
    root = Path(root)
    save_path = Path(save_path)
    man_path = manifest_path(save_path)
    splitter = make_splitter(chunk_size, chunk_overlap, separators, seed_compatible)
    files = discover(root, patterns)
    outputs = {_resolved(save_path), _resolved(man_path)}
    files = [f for f in files if _resolved(f) not in outputs]
    if not files:
        raise InputError(f"{root}: no files matching {', '.join(patterns)}: nothing to cut into chunks")

    seen: set[int] = set()
    entries: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    damaged: list[tuple[str, int, tuple[int, ...]]] = []
    cleaned: Counter[str] = Counter()
    chunks = duplicates = characters = 0
    out_digest = hashlib.sha256()
    with atomic_writer(save_path) as out:
        for path in files:
            rel = _relative(path, root)
            try:
                info = probe(path, bad_bytes_limit)
            except UndecodableFile as exc:
                log.warning("skipped %s: %s", rel, exc.reason)
                skipped.append((rel, exc.reason))
                continue
            except OSError as exc:
                reason = f"cannot read ({exc.strerror})"
                log.warning("skipped %s: %s", rel, reason)
                skipped.append((rel, reason))
                continue
            if info.bad_bytes:
                damaged.append((rel, info.bad_bytes, info.bad_offsets))
                log.warning("%s: %d bad %s bytes replaced by U+FFFD (first at byte %s)", rel,
                            info.bad_bytes, info.encoding, ", ".join(map(str, info.bad_offsets)))
            first_line = chunks + 1
            file_chunks = file_dups = file_chars = 0
            file_cleaned: Counter[str] = Counter()
            for piece in iter_blocks(path, info.encoding, block_chars, clean=False):
                text, changed = clean_text(piece)
                file_cleaned.update(changed)
                if not seed_compatible:
                    piece = text
                file_chars += len(piece)
                for chunk in splitter.split_text(piece):
                    d = _digest(chunk)
                    if d in seen:
                        file_dups += 1
                        continue
                    seen.add(d)
                    line = dumps_line(pretrain_record(chunk))
                    out.write(line)
                    out_digest.update(line)
                    file_chunks += 1
            chunks += file_chunks
            duplicates += file_dups
            characters += file_chars
            cleaned.update(file_cleaned)
            entries.append(
                {
                    "path": rel,
                    "size": info.size,
                    "sha256": info.sha256,
                    "encoding": info.encoding,
                    "characters": file_chars,
                    "chunks": file_chunks,
                    "duplicates": file_dups,
                    # 1-based output lines [first, last] holding this file's chunks.
                    "lines": [first_line, chunks] if file_chunks else [],
                    "bad_bytes": {"count": info.bad_bytes, "first_offsets": list(info.bad_offsets)},
                    "cleaned": dict(file_cleaned),
                }
            )
            log.debug("%s: %d chunks, %d duplicates", rel, file_chunks, file_dups)
            if on_file is not None:
                on_file(rel, file_chunks)
        if not chunks:
            raise InputError(_no_text(root, len(files), skipped))

    manifest = {
        "output": save_path.name,
        "output_sha256": out_digest.hexdigest(),
        "settings": {
            "chunk_size": chunk_size,
            "chunk_overlap": chunk_overlap,
            "separators": list(separators),
            "patterns": list(patterns),
            "seed_compatible": seed_compatible,
            "bad_bytes_limit": bad_bytes_limit,
            "block_chars": block_chars,
        },
        "totals": {
            "files_read": len(entries),
            "files_skipped": len(skipped),
            "files_with_bad_bytes": len(damaged),
            "bad_bytes": sum(n for _, n, _ in damaged),
            "chunks": chunks,
            "duplicates": duplicates,
            "characters": characters,
            # Invisible/control characters by category: normalised, or with
            # seed_compatible kept verbatim (see "settings").
            "cleaned": dict(cleaned),
        },
        "files": entries,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
    }
    with atomic_writer(man_path) as fh:
        fh.write(dumps_line(manifest))

    return PretrainSummary(
        files_read=len(entries),
        files_skipped=skipped,
        chunks=chunks,
        duplicates=duplicates,
        characters=characters,
        seconds=time.perf_counter() - started,
        save_path=save_path,
        manifest_path=man_path,
        bad_bytes=damaged,
        cleaned=dict(cleaned),
        seed_compatible=seed_compatible,
    )


def _no_text(root: Path, matched: int, skipped: Sequence[tuple[str, str]]) -> str:
    if len(skipped) == matched:
        shown = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        more = f"; {len(skipped) - 3} more in the log" if len(skipped) > 3 else ""
        return f"{root}: no text to cut: all {matched} matching files were skipped ({shown}{more})"
    return (f"{root}: no text to cut: the {matched - len(skipped)} readable matching files are empty"
            + (f" and {len(skipped)} were skipped" if skipped else ""))


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except OSError:
        return p.absolute()
