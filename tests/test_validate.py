"""validate: every XTuner rule is caught, on the right line, and the CLI exits accordingly."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import run

from pipeline.errors import InputError
from pipeline.settings import Settings
from pipeline.outputs.validate import (
    Problem,
    check_record,
    format_problem,
    record_kind,
    summary_line,
    validate_file,
    validate_lines,
)

SYS = "你是悟了悟了，专注于回答《黑神话：悟空》相关的问题。"


def line(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"


def conv(*pairs: tuple[str, str], system: str = SYS) -> dict[str, object]:
    turns: list[dict[str, str]] = []
    for i, (q, a) in enumerate(pairs):
        turn = {"system": system} if i == 0 and system else {}
        turn.update(input=q, output=a)
        turns.append(turn)
    return {"conversation": turns}


GOOD = line(conv(("游戏什么时候发售？", "2024年8月20日。")))
GOOD2 = line(conv(("主角是谁？", "天命人。"), ("他用什么武器？", "棍。")))
PRE = line({"conversation": [{"input": "", "output": "第一章 火照黑云"}]})


def errors(lines: list[bytes]) -> list[tuple[int, str]]:
    return [(p.line, p.msg) for p in validate_lines(lines).errors]


def warnings(lines: list[bytes]) -> list[tuple[int, str]]:
    return [(p.line, p.msg) for p in validate_lines(lines).warnings]


@pytest.mark.parametrize(
    "lines",
    [
        [GOOD, GOOD2],
        [PRE, PRE],
        [line({"conversation": [{"input": "", "output": "只有正文", "system": ""}]})],
    ],
    ids=["conversations", "pretraining", "pretraining-empty-system"],
)
def test_clean_files_have_no_problems(lines: list[bytes]) -> None:
    assert validate_lines(lines).problems == []


# Each case: the bad line goes in as line 2, between good ones, and must be
# reported as an error on line 2 with a message containing the fragment.
@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (b"\n", "blank line"),
        (b"   \t\n", "blank line"),
        (b'{"conversation": [\n', "invalid JSON"),
        (b'{"conversation": [{"input": "a", "output": "b"}]}{}\n', "invalid JSON"),
        (b'{"conversation": [{"input": "\xff", "output": "b"}]}\n', "not valid UTF-8"),
        (b"[1, 2]\n", "expected a JSON object, got an array"),
        (line({"conv": []}), "missing key 'conversation'"),
        (line({"conversation": {}}), "'conversation' must be an array"),
        (line({"conversation": []}), "'conversation' is empty"),
        (line({"conversation": ["hi"]}), "turn 1 must be an object"),
        (line({"conversation": [{"input": "问"}]}), "turn 1: missing key 'output'"),
        (line({"conversation": [{"output": "答"}]}), "turn 1: missing key 'input'"),
        (line({"conversation": [{"input": 3, "output": "答"}]}), "'input' must be a string"),
        (line({"conversation": [{"input": "问", "output": None}]}), "'output' must be a string"),
        (line({"conversation": [{"system": 1, "input": "问", "output": "答"}]}),
         "'system' must be a string"),
        (line(conv(("问", ""))), "turn 1: empty output"),
        (line(conv(("问", "答"), ("再问", "  \n"))), "turn 2: empty output"),
        (line({"conversation": [{"input": "问", "output": "答"},
                                {"system": SYS, "input": "再问", "output": "再答"}]}),
         "turn 2: 'system' is only allowed on the first turn"),
        (line(conv(("问<|im_start|>", "答"))), "turn 1 input contains the template marker <|im_start|>"),
        (line(conv(("问", "答<|im_end|>"))), "turn 1 output contains the template marker <|im_end|>"),
        (line(conv(("问", "<think>用户问的是……</think>答"))),
         "turn 1 output contains a reasoning tag <think>: a model's reasoning leaked in"),
        (line(conv(("问", "答"), ("草稿问题甲是什么？</think>", "再答"))),
         "turn 2 input contains a reasoning tag </think>"),
        (line(conv(("问", "答"), system="<|im_start|>system")),
         "turn 1 system contains the template marker <|im_start|>"),
        (PRE, "pretraining record in a file of conversation records (first at line 1)"),
    ],
)
def test_each_error_is_reported_on_its_line(bad: bytes, fragment: str) -> None:
    found = errors([GOOD, bad, GOOD2])
    assert any(n == 2 and fragment in msg for n, msg in found), found
    assert all(n == 2 for n, _ in found), found


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (line({**conv(("问", "答")), "id": "q1"}), "unknown key 'id'"),
        (line({"conversation": [{"input": "问", "output": "答", "refs": []}]}),
         "turn 1: unknown key 'refs'"),
        (line(conv(("问", "答</s>"))), "special token </s>"),
        (line(conv(("问<|endoftext|>", "答"))), "special token <|endoftext|>"),
        (line({"conversation": [{"input": "问", "output": "答"},
                                {"system": "", "input": "再问", "output": "再答"}]}),
         "empty 'system' after the first turn"),
        (line(conv(("问", "答"), ("", "再答"))), "turn 2: empty input"),
        (GOOD.replace(b"\n", b"\r\n"), "CRLF"),
    ],
)
def test_each_warning_is_reported_on_its_line(bad: bytes, fragment: str) -> None:
    lines = [GOOD, bad, GOOD2]
    assert errors(lines) == []
    found = warnings(lines)
    assert any(n == 2 and fragment in msg for n, msg in found), found


def test_missing_final_newline_is_reported_on_the_last_line() -> None:
    found = errors([GOOD, GOOD2.rstrip(b"\n")])
    assert found == [(2, "no newline at the end of the file (XTuner's loader needs one)")]


def test_half_written_last_line_reports_both_bad_json_and_missing_newline() -> None:
    found = errors([GOOD, GOOD2[:20]])
    assert [n for n, _ in found] == [2, 2]
    assert "invalid JSON" in found[0][1] and "no newline" in found[1][1]


def test_byte_order_mark_is_an_error_on_line_1_and_the_record_still_counts() -> None:
    report = validate_lines([b"\xef\xbb\xbf" + GOOD, GOOD2])
    assert [(p.line, p.msg) for p in report.errors] == [
        (1, "UTF-8 byte order mark at the start of the file")
    ]
    assert report.records == 2


def test_empty_file_is_a_whole_file_error() -> None:
    assert validate_lines([]).problems == [Problem(0, "empty file: no records")]


def test_every_blank_line_is_reported() -> None:
    assert errors([GOOD, b"\n", GOOD2, b"\n", b"\n"]) == [
        (2, "blank line"),
        (4, "blank line"),
        (5, "blank line"),
    ]


def test_mixed_kinds_report_every_record_of_the_other_kind() -> None:
    report = validate_lines([PRE, GOOD, PRE, GOOD2])
    assert [(p.line, p.msg.split(" (")[0]) for p in report.errors] == [
        (2, "conversation record in a file of pretraining records"),
        (4, "conversation record in a file of pretraining records"),
    ]
    assert report.kind == "pretraining"
    assert dict(report.kinds) == {"pretraining": 2, "conversation": 2}


def test_counts_records_and_turns_of_valid_records_only() -> None:
    report = validate_lines([GOOD, GOOD2, b"{bad\n", PRE])
    assert (report.records, report.turns) == (3, 4)


@pytest.mark.parametrize(
    ("turns", "kind"),
    [
        ([{"input": "", "output": "正文"}], "pretraining"),
        ([{"input": "问", "output": "答"}], "conversation"),
        ([{"system": SYS, "input": "", "output": "答"}], "conversation"),
        ([{"input": "", "output": "a"}, {"input": "", "output": "b"}], "conversation"),
    ],
)
def test_record_kind(turns: list[dict[str, str]], kind: str) -> None:
    assert record_kind(turns) == kind


def test_check_record_leaves_broken_records_unclassified() -> None:
    kind, turns, problems = check_record({"conversation": [{"input": "问"}]})
    assert kind is None and turns == 1
    assert problems == [("turn 1: missing key 'output'", "error")]


def test_validate_file_streams_a_file_and_names_a_missing_one(tmp_path: Path) -> None:
    f = tmp_path / "data.jsonl"
    f.write_bytes(GOOD + b"\n" + GOOD2.rstrip(b"\n"))
    report = validate_file(f)
    assert [(p.line, p.severity) for p in report.problems] == [(2, "error"), (3, "error")]
    with pytest.raises(InputError, match="missing.jsonl: no such file"):
        validate_file(tmp_path / "missing.jsonl")


def test_output_lines_name_file_line_and_severity() -> None:
    assert format_problem("a.jsonl", Problem(7, "blank line")) == "a.jsonl:7: error: blank line"
    assert format_problem("a.jsonl", Problem(0, "empty file: no records")) == (
        "a.jsonl: error: empty file: no records"
    )
    report = validate_lines([GOOD, GOOD2, b"\n"])
    assert summary_line("a.jsonl", report) == (
        "a.jsonl: FAILED: 2 records (conversation), 3 turns, 1 errors, 0 warnings"
    )


# ---- CLI -------------------------------------------------------------------


def cli(argv: list[str]) -> int:
    """The real command line: run.main turns InputError into exit 2."""
    return run.main(argv)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "good": GOOD + GOOD2,
        "bad": GOOD + b"\n" + GOOD2,
        "warn": line({**conv(("问", "答")), "id": 1}),
    }
    out = {}
    for name, data in made.items():
        out[name] = tmp_path / f"{name}.jsonl"
        out[name].write_bytes(data)
    return out


def test_cli_exit_0_for_clean_files(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["validate", str(files["good"])]) == 0
    assert "OK: 2 records" in capsys.readouterr().out


def test_cli_exit_1_and_prints_each_problem(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["validate", str(files["good"]), str(files["bad"])]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{files['bad']}:2: error: blank line" in out
    assert sum("FAILED" in o for o in out) == 1 and sum(": OK:" in o for o in out) == 1


def test_cli_warnings_pass_unless_strict(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["validate", str(files["warn"])]) == 0
    assert "warning: unknown key 'id'" in capsys.readouterr().out
    assert cli(["validate", "--strict", str(files["warn"])]) == 1
    capsys.readouterr()
    assert cli(["validate", "--quiet", str(files["warn"])]) == 0
    assert capsys.readouterr().out == f"{files['warn']}: OK: 1 records (conversation), 1 turns, 0 errors, 1 warnings\n"


def test_cli_missing_file_is_an_input_error_naming_it(files: dict[str, Path], tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    run.add_validate_parser(parser.add_subparsers())
    args = parser.parse_args(["validate", str(files["good"]), str(tmp_path / "nope.jsonl")])
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        args.func(args, Settings())
    assert cli(["validate", str(tmp_path)]) == 2


def test_cli_without_files_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["validate"])
    assert exc.value.code == 2
