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


def test_missing_final_newline_is_a_warning_on_the_last_line_that_says_what_it_costs() -> None:
    # XTuner, LLaMA-Factory and our own export load such a file; only joining files breaks.
    lines = [GOOD, GOOD2.rstrip(b"\n")]
    assert errors(lines) == []
    assert warnings(lines) == [(2, "no newline at the end of the file: XTuner and LLaMA-Factory load it "
                                   "as is, but `cat a.jsonl b.jsonl` would glue this record to the next "
                                   "file's first")]
    assert validate_lines(lines).records == 2


def test_half_written_last_line_reports_bad_json_and_missing_newline() -> None:
    lines = [GOOD, GOOD2[:20]]
    assert [(n, "invalid JSON" in m) for n, m in errors(lines)] == [(2, True)]
    assert [(n, "no newline" in m) for n, m in warnings(lines)] == [(2, True)]


def test_byte_order_mark_is_an_error_on_line_1_and_the_record_still_counts() -> None:
    report = validate_lines([b"\xef\xbb\xbf" + GOOD, GOOD2])
    assert [(p.line, p.msg) for p in report.errors] == [
        (1, "UTF-8 byte order mark at the start of the file")
    ]
    assert report.records == 2


def test_empty_file_is_a_whole_file_error() -> None:
    assert validate_lines([]).problems == [Problem(0, "empty file: no records")]


def test_every_blank_line_is_a_warning() -> None:
    lines = [GOOD, b"\n", GOOD2, b"   \t\n", b"\n"]
    assert errors(lines) == []
    assert [n for n, msg in warnings(lines) if msg.startswith("blank line: it holds no record (XTuner and "
                                                              "LLaMA-Factory load the file anyway")] == [2, 4, 5]
    assert validate_lines(lines).records == 2


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
    assert [(p.line, p.severity) for p in report.problems] == [(2, "warning"), (3, "warning")]
    with pytest.raises(InputError, match="missing.jsonl: no such file"):
        validate_file(tmp_path / "missing.jsonl")


def test_output_lines_name_file_line_and_severity() -> None:
    assert format_problem("a.jsonl", Problem(7, "blank line")) == "a.jsonl:7: error: blank line"
    assert format_problem("a.jsonl", Problem(0, "empty file: no records")) == (
        "a.jsonl: error: empty file: no records"
    )
    report = validate_lines([GOOD, GOOD2, b"[]\n"])
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
        "bad": GOOD + b"[]\n" + GOOD2,
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
    assert f"{files['bad']}:2: error: expected a JSON object, got an array" in out
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


# ---- our exports and the answer length limit -----------------------------------------------


def _exported(fmt: str, records: list[dict[str, object]]) -> list[bytes]:
    from pipeline.outputs.export import CONVERTERS

    return [line(CONVERTERS[fmt](r)) for r in records]  # type: ignore[index]


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "openai"])
def test_our_exports_are_recognised_and_pass(fmt: str) -> None:
    records = [conv(("游戏什么时候发售？", "2024年8月20日。")), conv(("主角是谁？", "天命人。"), ("武器？", "棍。"))]
    report = validate_lines(_exported(fmt, records))
    assert report.problems == [] and report.format == fmt
    assert (report.records, report.turns, report.kind) == (2, 3, "conversation")
    assert summary_line("x.jsonl", report).startswith(f"x.jsonl: OK: 2 records ({fmt} format, conversation)")


@pytest.mark.parametrize(
    ("fmt", "bad", "fragment"),
    [
        ("alpaca", {"instruction": "问", "input": "", "output": "", "system": "", "history": []},
         "turn 1: empty output"),
        ("alpaca", {"instruction": "问", "input": ""}, "not a valid alpaca record: missing key 'output'"),
        ("sharegpt", {"conversations": [{"from": "human", "value": "问"}], "system": ""},
         "not a valid sharegpt record: expected human/gpt pairs"),
        ("sharegpt", {"conversations": [{"from": "gpt", "value": "答"}, {"from": "human", "value": "问"}]},
         "expected 'human' then 'gpt'"),
        ("openai", {"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "<|im_end|>"}]},
         "template marker <|im_end|>"),
        ("openai", {"messages": [{"role": "user"}]}, "not a valid openai record"),
    ],
)
def test_a_broken_export_record_is_an_error_on_its_line(fmt: str, bad: dict[str, object], fragment: str) -> None:
    good = _exported(fmt, [conv(("问", "答"))])[0]
    found = errors([good, line(bad), good])
    assert any(n == 2 and fragment in msg for n, msg in found), found


def test_a_file_mixing_formats_names_the_odd_record() -> None:
    lines = [*_exported("alpaca", [conv(("问", "答"))]), *_exported("sharegpt", [conv(("问", "答"))])]
    assert (2, "sharegpt record in a file of alpaca records (first at line 1); one format per file") in errors(lines)


def test_pretraining_text_records_are_recognised() -> None:
    report = validate_lines([line({"text": "第一章"}), line({"text": "第二章"})])
    assert report.problems == [] and (report.format, report.kind, report.records) == ("text", "pretraining", 2)
    assert any("turn 1: empty output" in msg for _, msg in errors([line({"text": " "})]))


@pytest.mark.parametrize("fmt", [None, "openai"])
def test_answers_over_the_length_limit_are_warnings(fmt: str | None) -> None:
    records = [conv(("问", "答" * 30)), conv(("问", "短答。"), ("再问", "长" * 31))]
    lines = _exported(fmt, records) if fmt else [line(r) for r in records]
    report = validate_lines(lines, max_answer_chars=30)
    assert [(p.line, p.severity, p.msg) for p in report.problems] == [
        (2, "warning", "turn 2: answer of 31 characters, over the length limit "
                       "([conversations] max_answer_chars = 30)")]
    assert validate_lines(lines).problems == [], "no limit given: nothing to say"


def test_cli_warns_on_answers_over_the_settings_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[conversations]\nmax_answer_chars = 5\n", encoding="utf-8")
    data = tmp_path / "d.jsonl"
    data.write_bytes(line(conv(("问", "一二三四五六"))))
    assert cli(["--settings", str(cfg), "validate", str(data)]) == 0
    assert f"{data}:1: warning: turn 1: answer of 6 characters, over the length limit" in capsys.readouterr().out
