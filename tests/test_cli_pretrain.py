"""`python run.py pretrain` and the bare `python run.py` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_text_splitters import RecursiveCharacterTextSplitter

from run import EXIT_OK, EXIT_USAGE, build_parser, main

REPO = Path(__file__).resolve().parent.parent
REFERENCE_SEPARATORS = [
    "\n\n", "\n", " ", "。", " ，", ".", ",", "\u200b", "，", "、", "．", "。", "",
]
TEXT = "天命人 踏上西行之路。" * 40 + "\n\n" + "黄风岭上，风沙漫天；虎先锋拦路！" * 30


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(TEXT, encoding="utf-8")
    (root / "sub" / "b.md").write_text("# 第二回\n\n" + TEXT[::-1], encoding="utf-8")
    (root / "sub" / "c.txt").write_bytes(b"\x00\x01\x02binary\x00" * 20)
    return root


def write_settings(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(body, encoding="utf-8")
    return path


def outputs(path: Path) -> list[str]:
    return [
        json.loads(line)["conversation"][0]["output"]
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def test_pretrain_writes_the_dataset_and_prints_the_summary(
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = write_settings(tmp_path, "[pretrain]\nchunk_size = 200\nchunk_overlap = 20\n")
    save = tmp_path / "o" / "pre.jsonl"
    code = main(["--settings", str(settings), "pretrain", "--root-path", str(corpus),
                 "--save-path", str(save)])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    texts = outputs(save)
    assert texts and max(map(len, texts)) <= 200
    assert f"2 files read, 1 skipped, {len(texts)} chunks" in out
    assert "skipped sub/c.txt" in caplog.text  # the skipped file is named


def test_flags_override_settings(corpus: Path, tmp_path: Path) -> None:
    settings = write_settings(tmp_path, "[pretrain]\nchunk_size = 200\nchunk_overlap = 20\n")
    save = tmp_path / "pre.jsonl"
    assert main(["--settings", str(settings), "pretrain", "--root-path", str(corpus),
                 "--save-path", str(save), "--chunk-size", "50", "--chunk-overlap", "0"]) == 0
    assert max(map(len, outputs(save))) <= 50
    manifest = json.loads((tmp_path / "pre.jsonl.manifest.json").read_text(encoding="utf-8"))
    assert (manifest["settings"]["chunk_size"], manifest["settings"]["chunk_overlap"]) == (50, 0)


@pytest.mark.parametrize("via", ["flag", "setting"])
def test_seed_compatible_reproduces_the_reference_chunks(
    corpus: Path, tmp_path: Path, via: str
) -> None:
    body = "[pretrain]\nseed_compatible = true\n" if via == "setting" else ""
    settings = write_settings(tmp_path, body)
    root = corpus / "a.txt"
    save = tmp_path / "pre.jsonl"
    args = ["--settings", str(settings), "pretrain", "--root-path", str(root),
            "--save-path", str(save), "--chunk-size", "100", "--chunk-overlap", "10"]
    if via == "flag":
        args.append("--seed-compatible")
    assert main(args) == EXIT_OK
    reference = RecursiveCharacterTextSplitter(
        chunk_size=100, chunk_overlap=10, separators=REFERENCE_SEPARATORS, length_function=len
    ).split_text(TEXT)
    # The reference kept verbatim repeats; this stage drops them (and counts them).
    assert outputs(save) == list(dict.fromkeys(reference))


def test_a_bare_file_name_as_save_path_writes_in_the_working_folder(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = write_settings(tmp_path, "")
    assert main(["--settings", str(settings), "pretrain", "--root-path", str(corpus),
                 "--save-path", "pre.jsonl"]) == EXIT_OK
    assert outputs(tmp_path / "pre.jsonl")


def test_bare_run_is_the_whole_job_on_the_settings_folders(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "results"
    settings = write_settings(
        tmp_path, f'[paths]\ndata_dir = "{corpus.as_posix()}"\nout_dir = "{out_dir.as_posix()}"\n'
    )
    assert main(["--settings", str(settings)]) == EXIT_OK
    assert outputs(out_dir / "incremental_pretraining.jsonl")
    assert (out_dir / "incremental_pretraining.jsonl.manifest.json").is_file()
    assert "2 files read" in capsys.readouterr().out


def test_a_missing_root_path_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_settings(tmp_path, "")
    missing = tmp_path / "no_such_folder"
    code = main(["--settings", str(settings), "pretrain", "--root-path", str(missing),
                 "--save-path", str(tmp_path / "o.jsonl")])
    assert code == EXIT_USAGE
    assert "no_such_folder" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("[pretrain]\nchunk_sise = 100\n", "[pretrain] chunk_sise"),
        ('[pretrain]\nchunk_size = "big"\n', "[pretrain] chunk_size"),
        ("[pretrain]\nchunk_size = 0\n", "[pretrain] chunk_size"),
        ("[pretrain]\nchunk_size = 100\nchunk_overlap = 100\n", "[pretrain] chunk_overlap"),
        ("[pretrain]\nseparators = '\\n'\n", "[pretrain] separators"),
        ("[pretrian]\n", "unknown section [pretrian]"),
    ],
)
def test_bad_settings_are_a_usage_error_naming_file_and_key(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, named: str
) -> None:
    settings = write_settings(tmp_path, body)
    code = main(["--settings", str(settings), "pretrain", "--root-path", str(corpus),
                 "--save-path", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert str(settings) in err and named in err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--chunk-size", "0"], "--chunk-size"),
        (["--chunk-size", "100", "--chunk-overlap", "100"], "--chunk-overlap"),
        (["--chunk-overlap", "-1"], "--chunk-overlap"),
    ],
)
def test_bad_chunk_flags_are_a_usage_error_naming_the_flag(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    settings = write_settings(tmp_path, "")
    code = main(["--settings", str(settings), "pretrain", "--root-path", str(corpus),
                 "--save-path", str(tmp_path / "o.jsonl"), *flags])
    assert code == EXIT_USAGE
    assert named in capsys.readouterr().err


def test_the_sample_corpus_gives_real_output(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, "")
    save = tmp_path / "pre.jsonl"
    assert main(["--settings", str(settings), "pretrain", "--root-path", str(REPO / "data"),
                 "--save-path", str(save)]) == EXIT_OK
    manifest = json.loads((tmp_path / "pre.jsonl.manifest.json").read_text(encoding="utf-8"))
    paths = [f["path"] for f in manifest["files"]]
    assert len(paths) >= 6 and not manifest["skipped"]
    assert any("/" in p for p in paths) and any(p.endswith(".md") for p in paths)
    assert len(outputs(save)) >= 15


@pytest.mark.slow
def test_the_script_runs_as_a_program(corpus: Path, tmp_path: Path) -> None:
    settings = write_settings(tmp_path, "[pretrain]\nchunk_size = 300\n")
    save = tmp_path / "pre.jsonl"
    cmd = [sys.executable, str(REPO / "run.py"), "--settings", str(settings), "pretrain",
           "--root-path", str(corpus), "--save-path", str(save)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert first.returncode == 0, first.stderr
    data = save.read_bytes()
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert second.returncode == 0, second.stderr
    assert save.read_bytes() == data  # re-run replaces, never appends
    assert "2 files read, 1 skipped" in second.stdout


@pytest.mark.parametrize("before", [True, False])
def test_settings_option_works_before_or_after_the_subcommand(tmp_path: Path, before: bool) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text("[pretrain]\nchunk_size = 0\n", encoding="utf-8")
    argv = ["--settings", str(settings), "pretrain"] if before else ["pretrain", "--settings", str(settings)]
    args = build_parser().parse_args(argv)
    assert args.settings == str(settings)
    assert main(argv) == EXIT_USAGE  # the file was read: its bad value is reported


def test_an_empty_corpus_exits_2_naming_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = write_settings(tmp_path, "")
    empty = tmp_path / "empty_corpus"
    empty.mkdir()
    code = main(["--settings", str(settings), "pretrain", "--root-path", str(empty),
                 "--save-path", str(tmp_path / "o.jsonl")])
    assert code == EXIT_USAGE
    assert f"error: {empty}: no files matching *.txt, *.md" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
