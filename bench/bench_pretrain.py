"""Benchmark of the pretraining stage; prints figures, asserts nothing.

1. Throughput, whole process: ``python run.py pretrain`` on the seed corpus
   (``../shared/seed-data/wulewule/data`` when present, else a generated
   corpus of about 7 MB) against a bare script that reads the same files with
   ``open().read()``, splits them with a bare ``RecursiveCharacterTextSplitter``
   configured identically and writes JSONL with ``json.dumps``, as the
   reference script did. Runs alternate; the best of ``--repeat`` is kept.
   Target: ours >= 0.8x the bare throughput.
2. Peak RSS of ``python run.py pretrain`` on one generated file of
   ``--large-mb`` megabytes (target < 300 MB at 1024), next to the bare
   script's, which reads the file whole.
3. The same for ``--one-line-mb`` megabytes that are one line with no
   separator at all (no newline, no punctuation, no space): the splitter's
   last resort, cutting by characters. Target: under 300 MB and about the
   time per megabyte of the text with newlines (before: 200 MB took 91 s and
   584 MB).

    python bench/bench_pretrain.py [--corpus DIR] [--repeat 5] [--large-mb 64] [--one-line-mb 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.corpus import discover, make_splitter  # noqa: E402
from pipeline.settings import CHINESE_SEPARATORS, SEED_SEPARATORS  # noqa: E402

SEED_CORPUS = REPO.parent / "shared" / "seed-data" / "wulewule" / "data"  # ../shared from the repository

BARE = r'''
import json, sys
from langchain_text_splitters import RecursiveCharacterTextSplitter
config = json.load(open(sys.argv[1], encoding="utf-8"))
splitter = RecursiveCharacterTextSplitter(length_function=len, **config["splitter"])
with open(config["save"], "w", encoding="utf-8") as out:
    for name in config["files"]:
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
        for chunk in splitter.split_text(text):
            record = {"conversation": [{"input": "", "output": chunk}]}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
'''

HAN = (
    "天命人悟空大圣黑风山黄风岭小西天盘丝洞火焰山花果山金箍棒葫芦灵蕴精魄土地庙妖王"
    "猴子取经西游记唐僧八戒沙僧观音菩萨如来佛祖玉帝天庭灵山二郎神牛魔王红孩儿铁扇公主"
)
MARKS = "。。。，，，！？；"


def paragraph(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(2, 12)):
        parts.append("".join(rng.choices(HAN, k=rng.randint(8, 40))) + rng.choice(MARKS))
    return "".join(parts)


def write_text(path: Path, megabytes: float, seed: int) -> None:
    """Varied Chinese paragraphs, so chunks are (nearly all) distinct."""
    rng = random.Random(seed)
    pool = [paragraph(rng) for _ in range(4000)]
    target = int(megabytes * 1024 * 1024)
    written = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            block = "\n\n".join(rng.choices(pool, k=400)) + "\n\n"
            data = block.encode("utf-8")
            fh.write(block)
            written += len(data)


def generated_corpus(folder: Path) -> Path:
    for i in range(14):
        sub = folder / ("books" if i % 3 == 0 else "") / f"{i:02d}.txt"
        sub.parent.mkdir(parents=True, exist_ok=True)
        write_text(sub, 0.5, seed=i)
    return folder


def run_timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return seconds, rss


def splitter_config(seed: bool) -> dict[str, object]:
    s = make_splitter(1024, 50, SEED_SEPARATORS if seed else CHINESE_SEPARATORS, seed)
    return {
        "chunk_size": 1024,
        "chunk_overlap": 50,
        "separators": s._separators,  # the exact patterns the stage uses
        "keep_separator": s._keep_separator,
        "is_separator_regex": s._is_separator_regex,
    }


def commands(
    corpus: Path, work: Path, seed: bool, files: list[Path]
) -> tuple[list[str], list[str]]:
    tag = "seed" if seed else "default"
    settings = work / "settings.toml"
    settings.write_text("", encoding="utf-8")
    ours = [sys.executable, str(REPO / "run.py"), "--settings", str(settings), "pretrain",
            "--root-path", str(corpus), "--save-path", str(work / f"ours-{tag}.jsonl")]
    if seed:
        ours.append("--seed-compatible")
    config = work / f"bare-{tag}.json"
    config.write_text(
        json.dumps({
            "splitter": splitter_config(seed),
            "files": [str(f) for f in files],
            "save": str(work / f"bare-{tag}.jsonl"),
        }),
        encoding="utf-8",
    )
    bare_script = work / "bare.py"
    bare_script.write_text(BARE, encoding="utf-8")
    return ours, [sys.executable, str(bare_script), str(config)]


def throughput(corpus: Path, work: Path, repeat: int) -> None:
    files = discover(corpus, ["*.txt", "*.md"])
    size = sum(f.stat().st_size for f in files)
    print(f"corpus: {corpus} ({len(files)} files, {size / 1e6:.1f} MB)")
    for seed in (False, True):
        ours_cmd, bare_cmd = commands(corpus, work, seed, files)
        ours_t, bare_t = [], []
        for _ in range(repeat):
            ours_t.append(run_timed(ours_cmd)[0])
            bare_t.append(run_timed(bare_cmd)[0])
        o, b = min(ours_t), min(bare_t)
        mode = "seed-compatible" if seed else "default (Chinese)"
        print(
            f"  {mode:18s} ours {o:6.2f} s ({size / 1e6 / o:5.1f} MB/s)   "
            f"bare {b:6.2f} s ({size / 1e6 / b:5.1f} MB/s)   "
            f"throughput ratio {b / o:4.2f}x (target >= 0.8x)"
        )


def write_one_line(path: Path, megabytes: float, seed: int) -> None:
    """Characters only: no newline, punctuation or space anywhere."""
    rng = random.Random(seed)
    target = int(megabytes * 1024 * 1024)
    written = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            block = "".join(rng.choices(HAN, k=100_000))
            fh.write(block)
            written += len(block.encode("utf-8"))


def peak_rss(work: Path, megabytes: float, *, one_line: bool = False) -> None:
    name = "one-line" if one_line else "large"
    big = work / name / "big.txt"
    big.parent.mkdir()
    t = time.perf_counter()
    (write_one_line if one_line else write_text)(big, megabytes, seed=99)
    size = big.stat().st_size
    print(f"{name} file: {size / 2**20:.0f} MiB generated in {time.perf_counter() - t:.1f} s")
    ours_cmd, bare_cmd = commands(big, work, False, [big])
    seconds, rss = run_timed(ours_cmd)
    print(f"  ours  peak RSS {rss / 2**20:7.1f} MiB   {seconds:6.1f} s (target < 300 MiB at 1 GiB)")
    # The bare script holds the whole file and all chunks; on one line with no
    # separator LangChain's character split costs it about 36 MB a megabyte.
    if megabytes <= (16 if one_line else 256):
        seconds, rss = run_timed(bare_cmd)
        print(f"  bare  peak RSS {rss / 2**20:7.1f} MiB   {seconds:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="corpus folder (default: the seed corpus)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (best kept)")
    parser.add_argument("--large-mb", type=float, default=64, help="size of the large file")
    parser.add_argument("--one-line-mb", type=float, default=64,
                        help="size of the one-line file with no separator (0: skip)")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        work = Path(tmp)
        if not args.skip_throughput:
            corpus = args.corpus
            if corpus is None:
                corpus = SEED_CORPUS if SEED_CORPUS.is_dir() else generated_corpus(work / "gen")
            throughput(corpus, work, args.repeat)
        peak_rss(work, args.large_mb)
        if args.one_line_mb:
            peak_rss(work, args.one_line_mb, one_line=True)


if __name__ == "__main__":
    main()
