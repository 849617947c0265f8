"""The pretraining stage: discovery, decoding, splitting, output and manifest."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from langchain_text_splitters import RecursiveCharacterTextSplitter

from pipeline.corpus import (
    PretrainSummary,
    UndecodableFile,
    cut_point,
    decode,
    detect_encoding,
    discover,
    iter_blocks,
    iter_chunks,
    make_splitter,
    manifest_path,
    pretrain_record,
    probe,
    run_pretrain,
)
from pipeline.errors import InputError, SettingsError
from pipeline.settings import CHINESE_SEPARATORS

# The reference script's separators, written out here (not imported) so a
# change to SEED_SEPARATORS breaks the compatibility tests.
REFERENCE_SEPARATORS = [
    "\n\n", "\n", " ", "。", " ，", ".", ",", "\u200b", "，", "、", "．", "。", "",
]

HAN = "天命人悟空大圣黑风山黄风岭小西天盘丝洞火焰山花果山金箍棒葫芦灵蕴精魄土地庙妖王猴子取经西游"


def reference_splitter(size: int, overlap: int) -> RecursiveCharacterTextSplitter:
    return RecursiveCharacterTextSplitter(
        chunk_size=size, chunk_overlap=overlap, separators=REFERENCE_SEPARATORS,
        length_function=len,
    )


def zh_sentence(rng: random.Random, lo: int = 6, hi: int = 30) -> str:
    body = "".join(rng.choice(HAN) for _ in range(rng.randint(lo, hi)))
    if rng.random() < 0.3:
        body = body[: len(body) // 2] + "，" + body[len(body) // 2 :]
    return body + rng.choice(["。", "！", "？", "；", "……", "？！", "。”"])


def make_text(kind: str, seed: int = 7) -> str:
    rng = random.Random(seed)
    if kind == "zh_paragraphs":
        return "\n\n".join(
            "".join(zh_sentence(rng) for _ in range(rng.randint(1, 12))) for _ in range(30)
        )
    if kind == "zh_one_line":
        return "".join(zh_sentence(rng) for _ in range(200))
    if kind == "zh_stray_spaces":
        return "".join(
            zh_sentence(rng) + (" " if rng.random() < 0.2 else "") for _ in range(200)
        )
    if kind == "no_separators":
        return "".join(rng.choice(HAN) for _ in range(3000))
    if kind == "english":
        words = ["monkey", "staff", "destined", "one", "journey", "west", "wind", "temple"]
        sents = [
            " ".join(rng.choice(words) for _ in range(rng.randint(3, 15))).capitalize()
            + rng.choice([". ", "! ", "? ", ", then "])
            for _ in range(300)
        ]
        return "".join(s + ("\n" if rng.random() < 0.1 else "") for s in sents)
    if kind == "whitespace_heavy":
        return "\n".join(
            "  " + zh_sentence(rng) + " \t" + ("\n\n\n" if rng.random() < 0.2 else "")
            for _ in range(150)
        )
    raise AssertionError(kind)


TEXT_KINDS = [
    "zh_paragraphs", "zh_one_line", "zh_stray_spaces", "no_separators", "english",
    "whitespace_heavy",
]
SIZES = [(40, 0), (100, 20), (1024, 50), (7, 3)]


def default_splitter(size: int, overlap: int) -> RecursiveCharacterTextSplitter:
    return make_splitter(size, overlap, CHINESE_SEPARATORS, seed_compatible=False)


def seed_splitter(size: int, overlap: int) -> RecursiveCharacterTextSplitter:
    return make_splitter(size, overlap, REFERENCE_SEPARATORS, seed_compatible=True)


def assert_covers(text: str, chunks: Sequence[str]) -> None:
    """The chunks, minus overlap and whitespace, are the text, in order: each
    chunk starts within (or right after) the text covered so far; LangChain may
    emit a chunk made only of overlap. Every consistent placement is tracked,
    so repeated text cannot fool the check."""
    whole = re.sub(r"\s+", "", text)
    ends = {0}
    for i, chunk in enumerate(chunks):
        piece = re.sub(r"\s+", "", chunk)
        assert piece, f"chunk {i} is blank"
        ends = {
            end - k + len(piece)
            for end in ends
            for k in range(min(end, len(piece)) + 1)
            if whole.startswith(piece, end - k)
        }
        assert ends, f"chunk {i} does not continue the text: {chunk[:20]!r}"
    assert len(whole) in ends, f"text lost at the end: {whole[max(ends):][:40]!r}"


# --------------------------------------------------------------------------- splitting


@pytest.mark.parametrize("make", [default_splitter, seed_splitter], ids=["default", "seed"])
@pytest.mark.parametrize(("size", "overlap"), SIZES)
@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_no_chunk_exceeds_chunk_size(make, size: int, overlap: int, kind: str) -> None:
    chunks = make(size, overlap).split_text(make_text(kind))
    assert chunks
    assert max(len(c) for c in chunks) <= size


def test_default_mode_adds_the_character_fallback_so_size_holds() -> None:
    # A user's separators without "" would let an unbreakable run exceed the size.
    splitter = make_splitter(10, 0, ["\n", "。"], seed_compatible=False)
    assert max(len(c) for c in splitter.split_text("悟" * 95)) <= 10


@pytest.mark.parametrize("make", [default_splitter, seed_splitter], ids=["default", "seed"])
@pytest.mark.parametrize(("size", "overlap"), SIZES)
@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_chunks_cover_the_text_in_order(make, size: int, overlap: int, kind: str) -> None:
    text = make_text(kind)
    assert_covers(text, make(size, overlap).split_text(text))


def test_coverage_check_catches_a_lost_or_swapped_chunk() -> None:
    text = make_text("zh_paragraphs")
    chunks = default_splitter(100, 0).split_text(text)
    with pytest.raises(AssertionError):
        assert_covers(text, chunks[:3] + chunks[4:])
    with pytest.raises(AssertionError):
        assert_covers(text, [chunks[1], chunks[0], *chunks[2:]])


SENTENCE_END = re.compile(r"[。！？；…]+[”」』）]*$")
BAD_START = re.compile(r"^[。！？；…，、：”」』）]")


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("size", "overlap"), [(60, 0), (80, 25), (200, 50)])
def test_sentence_punctuation_stays_with_its_sentence(seed: int, size: int, overlap: int) -> None:
    rng = random.Random(seed)
    # Sentences shorter than a chunk, so every cut can fall between sentences.
    text = "".join(zh_sentence(rng, 4, 12).replace("，", "") for _ in range(120))
    chunks = default_splitter(size, overlap).split_text(text)
    assert len(chunks) > 5
    for c in chunks:
        assert SENTENCE_END.search(c), f"chunk does not end a sentence: {c[-12:]!r}"
        assert not BAD_START.match(c), f"chunk starts with punctuation: {c[:12]!r}"
    # The reference splitter moves the marks to the next chunk; this is the fix.
    seed_chunks = seed_splitter(size, overlap).split_text(text)
    assert any(BAD_START.match(c) for c in seed_chunks)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("他问：真的吗？！我答：是的。", ["他问：真的吗？！", "我答：是的。"]),
        ("他说……然后走了。", ["他说……", "然后走了。"]),
        ("“走吧。”他说完就走了。", ["“走吧。”", "他说完就走了。"]),
        ("It works! Really? Yes.", ["It works!", "Really?", "Yes."]),
    ],
)
def test_marks_runs_and_closing_quotes_end_the_sentence(text: str, expected: list[str]) -> None:
    # Size 1 would split characters; a size just under the text forces sentence cuts.
    chunks = make_splitter(max(map(len, expected)) + 1, 0, CHINESE_SEPARATORS, False)
    assert chunks.split_text(text) == expected


def test_a_stray_space_does_not_cut_a_chinese_sentence() -> None:
    text = "第一句话在这里结束。第二句 话里有个空格。第三句话也结束了。第四句话收尾。"
    chunks = default_splitter(20, 0).split_text(text)
    assert all(c.endswith("。") for c in chunks)
    assert any("第二句 话里有个空格。" in c for c in chunks)
    # The reference ranks the space above "。" and cuts the sentence there.
    assert "第一句话在这里结束。第二句" in seed_splitter(20, 0).split_text(text)


CRAFTED = [
    "悟空 ，你好。" * 200,
    "第一段。第二句，还有\u200b零宽空格、顿号．全角点。\n\n" * 60,
    "a b c. d, e " * 400,
    "\n\n".join(["一" * 1500, "二 三 四" * 300, "五。" * 700]),
    make_text("zh_stray_spaces"),
    make_text("english"),
    make_text("whitespace_heavy"),
]


@pytest.mark.parametrize(("size", "overlap"), [(1024, 50), (100, 10), (31, 0)])
@pytest.mark.parametrize("text", CRAFTED, ids=[f"crafted{i}" for i in range(len(CRAFTED))])
def test_seed_compatible_equals_the_reference_splitter(text: str, size: int, overlap: int) -> None:
    got = seed_splitter(size, overlap).split_text(text)
    assert got == reference_splitter(size, overlap).split_text(text)


def test_seed_compatible_file_chunks_equal_the_reference_on_the_same_text(tmp_path: Path) -> None:
    # CRLF and a BOM: the reference read the file in text mode (newlines
    # normalised); the BOM is dropped in both modes, so compare on BOM-less text.
    text = CRAFTED[1] + CRAFTED[4]
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    with open(path, encoding="utf-8-sig") as fh:
        same_text = fh.read()
    # The stage keeps the zero width spaces in this mode (and counts them), as the reference did.
    summary = run_pretrain(
        path, tmp_path / "out.jsonl", chunk_size=1024, chunk_overlap=50,
        separators=REFERENCE_SEPARATORS, patterns=["*.txt"], seed_compatible=True,
    )
    got = [json.loads(line)["conversation"][0]["output"]
           for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert got == reference_splitter(1024, 50).split_text(same_text)
    assert summary.cleaned == {"zero_width": 60}
    assert "60 invisible/control characters kept (seed-compatible)" in summary.line()


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, 10), (10, 11), (10, -1)])
def test_make_splitter_rejects_bad_sizes(size: int, overlap: int) -> None:
    with pytest.raises(SettingsError, match="chunk_"):
        make_splitter(size, overlap, CHINESE_SEPARATORS, seed_compatible=False)


# --------------------------------------------------------------------------- blocks


@pytest.mark.parametrize(
    ("buf", "cut"),
    [
        ("aaaaaa\n\nbb\ncc", 8),  # paragraph break in the later half wins over a later line
        ("aaaaaaaa\nbb", 9),  # else the last line break
        ("\n\naaaaaaaaaaaa", 14),  # a break only in the first half is not used
        ("一二三四。五六七八。九", 10),  # else the last sentence end
        ("一二三四五六七八", 8),  # else the whole buffer
    ],
)
def test_cut_point(buf: str, cut: int) -> None:
    assert cut_point(buf) == cut


@pytest.mark.parametrize("kind", ["zh_paragraphs", "zh_one_line", "no_separators", "english"])
@pytest.mark.parametrize("block", [50, 333, 10_000])
def test_blocks_are_bounded_and_rejoin_to_the_text(tmp_path: Path, kind: str, block: int) -> None:
    text = make_text(kind) * 3
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(iter_blocks(path, "utf-8", block))
    assert "".join(pieces) == text
    # The memory bound: no piece (so no buffer) grows past two blocks.
    assert max(len(p) for p in pieces) <= 2 * block
    if len(text) > block:
        assert len(pieces) > 1


@pytest.mark.parametrize("block", [64, 500])
def test_block_wise_chunks_still_cover_the_file_within_size(tmp_path: Path, block: int) -> None:
    text = make_text("zh_paragraphs") + make_text("zh_one_line")
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    chunks = list(iter_chunks(path, default_splitter(100, 20), block_chars=block))
    assert max(len(c) for c in chunks) <= 100
    assert_covers(text, chunks)


def test_crlf_split_across_a_block_boundary_is_one_newline(tmp_path: Path) -> None:
    path = tmp_path / "crlf.txt"
    path.write_bytes(("ab\r\n" * 100).encode())
    assert "".join(iter_blocks(path, "utf-8", 3)) == "ab\n" * 100


# --------------------------------------------------------------------------- discovery


def touch(path: Path, text: str = "悟空。") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_discovery_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    for rel in [
        "b.txt", "a.md", "A2.TXT", "sub/z.txt", "sub/deeper/y.md", "a_dir/x.txt",
        ".hidden.txt", ".git/config.txt", "sub/.cache/c.txt", "notes.rst", "data.jsonl",
    ]:
        touch(tmp_path / rel)
    got = [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path, ["*.txt", "*.md"])]
    assert got == [
        "A2.TXT", "a.md", "a_dir/x.txt", "b.txt", "sub/deeper/y.md", "sub/z.txt",
    ]


def test_discovery_order_is_by_path_parts(tmp_path: Path) -> None:
    # "a/b.txt" sorts before "a-b.txt" by parts, whatever the OS lists first.
    for rel in ["a-b.txt", "a/b.txt", "a/a.txt"]:
        touch(tmp_path / rel)
    got = [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path, ["*.txt"])]
    assert got == ["a/a.txt", "a/b.txt", "a-b.txt"]


def test_discovery_honours_patterns(tmp_path: Path) -> None:
    touch(tmp_path / "a.txt")
    touch(tmp_path / "b.md")
    touch(tmp_path / "c.rst")
    assert [p.name for p in discover(tmp_path, ["*.rst"])] == ["c.rst"]


def test_a_root_that_is_a_file_is_read_whatever_its_name(tmp_path: Path) -> None:
    f = touch(tmp_path / "book.text")
    assert discover(f, ["*.txt"]) == [f]


def test_a_missing_root_is_an_input_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match="nowhere"):
        discover(missing, ["*.txt"])
    with pytest.raises(InputError, match="nowhere"):
        run_pretrain(
            missing, tmp_path / "o.jsonl", chunk_size=100, chunk_overlap=0,
            separators=CHINESE_SEPARATORS, patterns=["*.txt"], seed_compatible=False,
        )


# --------------------------------------------------------------------------- decoding

ZH = (
    "《黑神话：悟空》取材于《西游记》。玩家扮演天命人，寻找大圣遗留的六件根器。\r\n"
    "游戏于2024年8月20日发售，登陆电脑与主机平台。\n"
)
ZH_TW = (
    "《黑神話：悟空》取材於《西遊記》。玩家扮演天命人，尋找大聖遺留的六件根器。\n"
    "遊戲於2024年8月20日發售，登陸電腦與主機平台。\n"
)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (ZH.encode("utf-8"), ZH),
        (b"\xef\xbb\xbf" + ZH.encode("utf-8"), ZH),
        (ZH.encode("gb18030"), ZH),
        (ZH.encode("gbk"), ZH),
        (ZH_TW.encode("big5"), ZH_TW),
        (ZH.encode("utf-16"), ZH),
        (ZH.encode("utf-16-le"), ZH),
        ("a\rb\r\nc\n".encode(), "a\nb\nc\n"),
        (b"", ""),
    ],
    ids=["utf8", "utf8-bom", "gb18030", "gbk", "big5", "utf16-bom", "utf16le-no-bom", "newlines", "empty"],
)
def test_decode(raw: bytes, text: str) -> None:
    assert decode(raw, "f.txt") == text.replace("\r\n", "\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(4000),
        b"text\x00with\x00nuls\x00" * 50,
        bytes(2000),
        bytes(range(32)) * 40,
    ],
    ids=["png", "nuls", "zeros", "controls"],
)
def test_binary_is_refused_with_the_file_name(raw: bytes) -> None:
    with pytest.raises(UndecodableFile, match=r"^img/x\.txt: "):
        decode(raw, "img/x.txt")


def test_detect_encoding_prefers_a_bom() -> None:
    assert detect_encoding(b"\xef\xbb\xbfabc") == "utf-8-sig"
    assert detect_encoding(b"\xff\xfe\x00\x00a\x00\x00\x00") == "utf-32"
    assert detect_encoding("悟".encode()[:2]) == "utf-8"  # a cut character is not an error


def test_probe_finds_bad_bytes_past_the_first_block(tmp_path: Path) -> None:
    path = tmp_path / "late.txt"
    good = ("悟空。" * 200_000).encode()  # ~1.8 MB, beyond one read
    path.write_bytes(good + b"\xff\xfe tail")
    info = probe(path)
    assert (info.encoding, info.bad_bytes, info.bad_offsets) == ("utf-8", 2, (len(good), len(good) + 1))


def test_a_file_with_too_many_bad_bytes_is_not_text_and_says_where(tmp_path: Path) -> None:
    path = tmp_path / "late.txt"
    good = ("悟空。" * 200_000).encode()
    path.write_bytes(good + b"\xff" * 17)
    with pytest.raises(UndecodableFile, match=rf"late\.txt: not utf-8 text: more than 16 bad bytes "
                                              rf"\(first at byte {len(good)}, {len(good) + 1}, "):
        probe(path, bad_bytes_limit=16)


def test_probe_reports_size_hash_and_encoding(tmp_path: Path) -> None:
    import hashlib

    raw = ZH.encode("gb18030")
    path = tmp_path / "gb.txt"
    path.write_bytes(raw)
    info = probe(path)
    assert (info.size, info.sha256, info.encoding) == (
        len(raw), hashlib.sha256(raw).hexdigest(), "gb18030",
    )


# --------------------------------------------------------------------------- the stage


def pretrain(root: Path, save: Path, **kw) -> PretrainSummary:
    args = dict(
        chunk_size=60, chunk_overlap=10, separators=CHINESE_SEPARATORS,
        patterns=["*.txt", "*.md"], seed_compatible=False,
    )
    args.update(kw)
    return run_pretrain(root, save, **args)


def outputs(path: Path) -> list[str]:
    lines = path.read_bytes().decode("utf-8").splitlines()
    return [json.loads(line)["conversation"][0]["output"] for line in lines]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    rng = random.Random(5)
    touch(root / "a.txt", "".join(zh_sentence(rng) for _ in range(20)))
    (root / "b_bom.txt").write_bytes(b"\xef\xbb\xbf" + "大圣归来。天命人出发。".encode())
    (root / "sub").mkdir()
    (root / "sub" / "c_gb.txt").write_bytes(ZH.encode("gb18030"))
    (root / "sub" / "d.md").write_text("# 标题\n\n" + "".join(zh_sentence(rng) for _ in range(10)), encoding="utf-8")
    (root / "sub" / "e_bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(500))
    return root


def test_run_writes_records_and_a_manifest_that_traces_each_chunk(corpus: Path, tmp_path: Path) -> None:
    save = tmp_path / "out" / "pre.jsonl"
    summary = pretrain(corpus, save)
    raw = save.read_bytes()
    assert raw.endswith(b"\n")
    assert "天命人".encode() in raw  # UTF-8, not ASCII-escaped
    records = [json.loads(line) for line in raw.splitlines()]
    assert records[0] == pretrain_record(records[0]["conversation"][0]["output"])
    assert records[0]["conversation"][0]["input"] == ""

    manifest = json.loads(manifest_path(save).read_text(encoding="utf-8"))
    assert manifest_path(save) == tmp_path / "out" / "pre.jsonl.manifest.json"
    files = {f["path"]: f for f in manifest["files"]}
    assert list(files) == ["a.txt", "b_bom.txt", "sub/c_gb.txt", "sub/d.md"]
    assert files["sub/c_gb.txt"]["encoding"] == "gb18030"
    assert manifest["skipped"] == [{"path": "sub/e_bin.txt", "reason": "binary content (control characters)"}]
    assert manifest["settings"]["chunk_size"] == 60
    # Every chunk traces back to its file through the line ranges.
    texts = outputs(save)
    for rel, entry in files.items():
        first, last = entry["lines"]
        source = decode((corpus / rel).read_bytes(), rel)
        for chunk in texts[first - 1 : last]:
            assert chunk in source
    assert sum(f["chunks"] for f in files.values()) == len(texts) == summary.chunks
    assert summary.files_read == 4
    assert summary.files_skipped == [("sub/e_bin.txt", "binary content (control characters)")]


def test_the_bom_is_not_in_any_chunk_and_gb18030_text_is_read(corpus: Path, tmp_path: Path) -> None:
    save = tmp_path / "pre.jsonl"
    pretrain(corpus, save)
    texts = outputs(save)
    assert "大圣归来。天命人出发。" in texts
    assert not any("\ufeff" in t for t in texts)
    assert any("取材于《西游记》" in t for t in texts)


def test_the_summary_line_counts_everything(corpus: Path, tmp_path: Path) -> None:
    s = pretrain(corpus, tmp_path / "pre.jsonl")
    line = s.line()
    for part in (
        f"{s.files_read} files read", "1 skipped", f"{s.chunks} chunks",
        f"{s.duplicates} duplicates dropped", f"{s.characters} characters",
    ):
        assert part in line
    assert s.characters == sum(
        len(decode(p.read_bytes())) for p in discover(corpus, ["*.txt", "*.md"]) if "bin" not in p.name
    )


def test_repeated_chunks_are_dropped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "d"
    para = "这一段在两个文件里一字不差。"
    touch(root / "one.txt", f"{para}\n\n第一个文件独有的话。")
    touch(root / "two.txt", f"{para}\n\n第二个文件独有的话。\n\n{para}")
    save = tmp_path / "o.jsonl"
    s = pretrain(root, save, chunk_size=16, chunk_overlap=0)
    texts = outputs(save)
    assert texts.count(para) == 1
    assert s.duplicates == 2
    manifest = json.loads(manifest_path(save).read_text(encoding="utf-8"))
    assert [f["duplicates"] for f in manifest["files"]] == [0, 2]


def test_a_rerun_replaces_the_output_byte_for_byte(corpus: Path, tmp_path: Path) -> None:
    save = tmp_path / "pre.jsonl"
    pretrain(corpus, save)
    first = (save.read_bytes(), manifest_path(save).read_bytes())
    pretrain(corpus, save)
    assert (save.read_bytes(), manifest_path(save).read_bytes()) == first


def test_an_interrupted_run_leaves_the_previous_files_intact(corpus: Path, tmp_path: Path) -> None:
    save = tmp_path / "pre.jsonl"
    pretrain(corpus, save)
    before = (save.read_bytes(), manifest_path(save).read_bytes())
    touch(corpus / "zz_new.txt", "新加的文件。" * 30)

    def interrupt(rel: str, chunks: int) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the first file was written

    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, save, on_file=interrupt)
    assert (save.read_bytes(), manifest_path(save).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "pre.jsonl", "pre.jsonl.manifest.json",
    ]


def test_a_file_as_root_and_an_output_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "d"
    book = touch(root / "book.txt", "孙悟空出世。" * 20)
    s = pretrain(book, root / "pre.txt")  # output matches *.txt, but is never read back
    assert s.files_read == 1
    s = pretrain(root, root / "pre.txt")
    assert s.files_read == 1
    manifest = json.loads(manifest_path(root / "pre.txt").read_text(encoding="utf-8"))
    assert [f["path"] for f in manifest["files"]] == ["book.txt"]


# --------------------------------------------------------------------------- clean text, bad bytes, empty corpora


def test_invisible_characters_leave_the_chunks_and_are_counted_in_summary_and_manifest(tmp_path: Path) -> None:
    root = tmp_path / "data"
    part = "天命人踏上西行之路。黄风岭上风沙漫天。\n"
    # Two BOM files joined by `cat`, a zero width space, a soft hyphen, a bidi
    # override, pdftotext page breaks and an ANSI colour; the no-break space stays.
    raw = (b"\xef\xbb\xbf" + part.encode() + b"\xef\xbb\xbf"
           + f"{part}\x0c{part}第\u200b三\u00ad回\u202e。\x1b[31m红\x1b[0m色\xa0空格。".encode())
    (root).mkdir()
    (root / "joined.txt").write_bytes(raw)
    save = tmp_path / "pre.jsonl"
    summary = pretrain(root, save, chunk_size=30, chunk_overlap=0)
    text = "".join(outputs(save))
    assert not re.search("[\ufeff\u200b\u00ad\u202e\x0c\x1b]", text)
    assert "第三回。红色\xa0空格。" in text
    expected = {"bom": 1, "zero_width": 1, "soft_hyphen": 1, "bidi": 1, "page_break": 1, "control": 2}
    assert summary.cleaned == expected
    assert "7 invisible/control characters normalised (control 2, " in summary.line()
    manifest = json.loads(manifest_path(save).read_text(encoding="utf-8"))
    assert manifest["totals"]["cleaned"] == expected
    assert manifest["files"][0]["cleaned"] == expected


@pytest.mark.parametrize(
    ("raw", "count", "offsets"),
    [
        # A single NUL in 5,000 characters: a control character, cleaned away.
        ("悟空。" * 800 + "\x00" + "大圣。" * 866, 0, []),
        # A stray 0xFF in UTF-8 text.
        ("天命人出发。".encode() * 40 + b"\xff" + "The wind rises.".encode() * 40, 1, [18 * 40]),
        # A truncated last multi-byte character.
        ("悟空。".encode() * 4000 + "空".encode()[:2], 2, [36000]),
    ],
    ids=["one-nul", "stray-0xff", "truncated-last-character"],
)
def test_a_text_file_with_a_few_bad_bytes_is_read_and_reported(
    tmp_path: Path, raw: str | bytes, count: int, offsets: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_bytes(raw.encode() if isinstance(raw, str) else raw)
    save = tmp_path / "pre.jsonl"
    summary = pretrain(root, save)
    assert summary.files_read == 1 and not summary.files_skipped
    text = "".join(outputs(save))
    assert "\x00" not in text and text.count("\ufffd") == (1 if count else 0)
    manifest = json.loads(manifest_path(save).read_text(encoding="utf-8"))
    assert manifest["files"][0]["bad_bytes"] == {"count": count, "first_offsets": offsets}
    if count:
        assert summary.bad_bytes == [("notes.txt", count, tuple(offsets))]
        assert f"1 with bad bytes replaced (notes.txt {count})" in summary.line()
        assert f"notes.txt: {count} bad utf-8 bytes replaced by U+FFFD (first at byte {offsets[0]})" in caplog.text


def test_an_empty_corpus_is_an_input_error_naming_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "notes.pdf", "not a text pattern")
    with pytest.raises(InputError, match=rf"^{re.escape(str(root))}: no files matching \*\.txt, \*\.md"):
        pretrain(root, tmp_path / "pre.jsonl")
    assert not (tmp_path / "pre.jsonl").exists()


def test_a_corpus_whose_every_file_is_skipped_is_an_input_error_and_keeps_the_old_output(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.txt").write_bytes(bytes(range(32)) * 40)
    (root / "b.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(4000))
    save = tmp_path / "pre.jsonl"
    save.write_text("previous\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{re.escape(str(root))}: no text to cut: all 2 matching files "
                                         r"were skipped \(a\.txt: binary"):
        pretrain(root, save)
    assert save.read_text(encoding="utf-8") == "previous\n"
    assert not manifest_path(save).exists()


def test_a_corpus_of_empty_files_is_an_input_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "a.txt", "")
    touch(root / "b.txt", " \n\n ")
    with pytest.raises(InputError, match=r"no text to cut: the 2 readable matching files are empty"):
        pretrain(root, tmp_path / "pre.jsonl")


@pytest.mark.parametrize(("size", "overlap"), [(1024, 50), (100, 99), (7, 0), (2, 1)])
@pytest.mark.parametrize("make", [default_splitter, seed_splitter], ids=["default", "seed"])
@pytest.mark.parametrize(
    "text",
    ["悟" * 5000, "\t悟空\u3000" * 900 + "大", "一。" + "二" * 3000 + "。三", "x" * 2049],
    ids=["han", "whitespace-inside", "one-long-sentence", "ascii"],
)
def test_text_with_no_separator_is_cut_as_langchain_cuts_it(make, size: int, overlap: int, text: str) -> None:
    # The linear fallback must give LangChain's own chunks, character for character.
    ours = make(size, overlap)
    plain = RecursiveCharacterTextSplitter(
        chunk_size=size, chunk_overlap=overlap, separators=ours._separators,
        keep_separator=ours._keep_separator, is_separator_regex=ours._is_separator_regex,
        length_function=len,
    )
    assert ours.split_text(text) == plain.split_text(text)
