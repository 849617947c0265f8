"""export: conversions keep every turn and the system prompt, the split is
seeded, disjoint and complete, dataset_info.json registers what was written."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import run

from pipeline.errors import InputError
from pipeline.outputs.export import (
    dataset_info_entry,
    export,
    from_alpaca,
    from_openai,
    from_sharegpt,
    read_conversations,
    split,
    to_alpaca,
    to_openai,
    to_sharegpt,
)
from pipeline.jsonl import dumps_line
from pipeline.settings import PathSettings, Settings

SYS = "你是悟了悟了，专注于回答《黑神话：悟空》相关的问题。"

Record = dict[str, Any]


def conv(*pairs: tuple[str, str], system: str = SYS) -> Record:
    turns: list[dict[str, str]] = []
    for i, (q, a) in enumerate(pairs):
        turn = {"system": system} if i == 0 and system else {}
        turn.update(input=q, output=a)
        turns.append(turn)
    return {"conversation": turns}


RECORDS = {
    "one-turn": conv(("游戏什么时候发售？", "2024年8月20日。")),
    "three-turns": conv(
        ("主角是谁？", "天命人。"),
        ("天命人用什么武器？", "如意金箍棒。\n还有葫芦。"),
        ("棍法有几种？", '三种："劈棍"、"立棍"、"戳棍"。'),
    ),
    "no-system": conv(("Who is the boss?", "Yellow Wind Sage."), ("Where?", "Ch. 2"), system=""),
    "markup-in-text": conv(("What does `<tag>` mean?", '{"json": true} and [[a, b]]')),
}

ROUND_TRIPS: list[tuple[Callable[[Mapping[str, Any]], Record], Callable[[Mapping[str, Any]], Record]]] = [
    (to_alpaca, from_alpaca),
    (to_sharegpt, from_sharegpt),
    (to_openai, from_openai),
]


@pytest.mark.parametrize("record", RECORDS.values(), ids=RECORDS.keys())
@pytest.mark.parametrize(("to", "back"), ROUND_TRIPS, ids=["alpaca", "sharegpt", "openai"])
def test_every_turn_and_the_system_prompt_survive_a_round_trip(
    record: Record, to: Callable[..., Record], back: Callable[..., Record]
) -> None:
    converted = to(record)
    # Through JSON too, as a trainer reads it.
    assert back(json.loads(dumps_line(converted))) == record


def test_alpaca_puts_the_last_turn_in_instruction_and_earlier_ones_in_history() -> None:
    assert to_alpaca(RECORDS["three-turns"]) == {
        "instruction": "棍法有几种？",
        "input": "",
        "output": '三种："劈棍"、"立棍"、"戳棍"。',
        "system": SYS,
        "history": [["主角是谁？", "天命人。"], ["天命人用什么武器？", "如意金箍棒。\n还有葫芦。"]],
    }


def test_sharegpt_alternates_human_and_gpt_with_system_beside() -> None:
    assert to_sharegpt(conv(("问一", "答一"), ("问二", "答二"))) == {
        "conversations": [
            {"from": "human", "value": "问一"},
            {"from": "gpt", "value": "答一"},
            {"from": "human", "value": "问二"},
            {"from": "gpt", "value": "答二"},
        ],
        "system": SYS,
    }


@pytest.mark.parametrize(
    ("system", "first"),
    [(SYS, {"role": "system", "content": SYS}), ("", {"role": "user", "content": "问"})],
)
def test_openai_opens_with_a_system_message_only_when_there_is_one(
    system: str, first: dict[str, str]
) -> None:
    messages = to_openai(conv(("问", "答"), system=system))["messages"]
    assert messages[0] == first
    assert messages[-1] == {"role": "assistant", "content": "答"}


def test_from_alpaca_joins_input_to_instruction_as_llama_factory_does() -> None:
    rec = {"instruction": "翻译", "input": "悟空", "output": "Wukong"}
    assert from_alpaca(rec) == {"conversation": [{"input": "翻译\n悟空", "output": "Wukong"}]}


@pytest.mark.parametrize(
    ("reader", "record"),
    [
        (from_sharegpt, {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}),
        (from_sharegpt, {"conversations": [{"from": "human", "value": "q"}]}),
        (from_openai, {"messages": [{"role": "system", "content": "s"}]}),
    ],
)
def test_inverse_readers_refuse_records_that_are_not_question_answer_pairs(
    reader: Callable[..., Record], record: Record
) -> None:
    with pytest.raises(ValueError):
        reader(record)


# ---- split -------------------------------------------------------------------


@pytest.mark.parametrize(("n", "ratio"), [(10, 0.1), (100, 0.25), (7, 0.5), (2, 0.01), (50, 0.99)])
def test_split_is_disjoint_complete_ordered_and_sized_by_ratio(n: int, ratio: float) -> None:
    items = list(range(n))
    train, val = split(items, ratio, seed=42)
    assert sorted(train + val) == items
    assert not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert len(val) == min(max(round(n * ratio), 1), n - 1)


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    items = [f"r{i}" for i in range(200)]
    assert split(items, 0.2, seed=7) == split(items, 0.2, seed=7)
    assert split(items, 0.2, seed=7)[1] != split(items, 0.2, seed=8)[1]


@pytest.mark.parametrize(("n", "ratio", "sizes"), [(5, 0.0, (5, 0)), (1, 0.5, (1, 0)), (0, 0.3, (0, 0))])
def test_split_edge_cases(n: int, ratio: float, sizes: tuple[int, int]) -> None:
    train, val = split(list(range(n)), ratio, seed=1)
    assert (len(train), len(val)) == sizes


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_split_rejects_ratios_outside_zero_to_one(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        split([1, 2, 3], ratio, seed=1)


# ---- dataset_info.json -------------------------------------------------------


def test_dataset_info_entries_match_llama_factory_columns_and_tags() -> None:
    assert dataset_info_entry("alpaca", "x.jsonl") == {
        "file_name": "x.jsonl",
        "formatting": "alpaca",
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        },
    }
    assert dataset_info_entry("sharegpt", "y.jsonl") == {
        "file_name": "y.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
    }
    # LLaMA-Factory's defaults are sharegpt's keys: the entry names OpenAI's (and
    # says sharegpt: its "openai" converter appends text to the system prompt).
    assert dataset_info_entry("openai", "z.jsonl") == {
        "file_name": "z.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"},
    }
    assert dataset_info_entry("pretrain", "t.jsonl") == {"file_name": "t.jsonl", "columns": {"prompt": "text"}}
    with pytest.raises(ValueError):
        dataset_info_entry("csv", "z.csv")  # type: ignore[arg-type]


def read_jsonl(path: Path) -> list[Record]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_export_with_split_writes_both_files_and_registers_both(tmp_path: Path) -> None:
    records = [conv((f"问{i}", f"答{i}")) for i in range(20)]
    result = export(records, "sharegpt", tmp_path, "wukong", val_ratio=0.25, seed=3)
    train, val = tmp_path / "wukong_train.jsonl", tmp_path / "wukong_val.jsonl"
    assert result.files == ((train, 15), (val, 5))
    back = [from_sharegpt(r) for r in read_jsonl(train) + read_jsonl(val)]
    assert sorted(map(json.dumps, back)) == sorted(map(json.dumps, records))
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info == {
        "wukong_train": dataset_info_entry("sharegpt", "wukong_train.jsonl"),
        "wukong_val": dataset_info_entry("sharegpt", "wukong_val.jsonl"),
    }
    # Same seed, same split.
    export(records, "sharegpt", tmp_path / "again", "wukong", val_ratio=0.25, seed=3)
    assert (tmp_path / "again" / "wukong_val.jsonl").read_bytes() == val.read_bytes()


def test_export_keeps_other_datasets_and_drops_its_own_stale_entries(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"identity": {"file_name": "identity.json"}}), encoding="utf-8"
    )
    records = [conv(("问", "答")), conv(("再问", "再答"))]
    export(records, "alpaca", tmp_path, "wk", val_ratio=0.5, seed=1)
    export(records, "alpaca", tmp_path, "wk")
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(info) == {"identity", "wk"}
    assert info["wk"]["file_name"] == "wk.jsonl"


def test_export_refuses_to_overwrite_an_unreadable_dataset_info(tmp_path: Path) -> None:
    (tmp_path / "dataset_info.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="dataset_info.json"):
        export([conv(("问", "答"))], "alpaca", tmp_path, "wk")
    assert (tmp_path / "dataset_info.json").read_text(encoding="utf-8") == "{not json"


def test_openai_export_registers_its_file_for_llama_factory(tmp_path: Path) -> None:
    result = export([conv(("问", "答"))], "openai", tmp_path, "wk")
    assert result.dataset_info == tmp_path / "dataset_info.json"
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info == {"wk": dataset_info_entry("openai", "wk.jsonl")}
    assert read_jsonl(tmp_path / "wk.jsonl") == [to_openai(conv(("问", "答")))]


def pretraining(text: str) -> Record:
    return {"conversation": [{"input": "", "output": text}]}


def test_pretrain_export_writes_text_lines_in_order_with_their_entry(tmp_path: Path) -> None:
    chunks = ["第一段。\n有换行。", "second chunk with \"quotes\"", "第三段"]
    result = export([pretraining(c) for c in chunks], "pretrain", tmp_path, "pt", val_ratio=0.34, seed=0)
    train, val = read_jsonl(tmp_path / "pt_train.jsonl"), read_jsonl(tmp_path / "pt_val.jsonl")
    assert all(set(r) == {"text"} for r in train + val)
    assert sorted(r["text"] for r in train + val) == sorted(chunks)
    assert len(val) == 1
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info == {"pt_train": dataset_info_entry("pretrain", "pt_train.jsonl"),
                    "pt_val": dataset_info_entry("pretrain", "pt_val.jsonl")}
    assert result.line().startswith("exported 3 pretraining texts as pretrain: ")


# ---- reading the input -------------------------------------------------------


def test_read_conversations_skips_blank_lines_and_keeps_order(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    recs = list(RECORDS.values())
    f.write_bytes(b"".join(dumps_line(r) for r in recs[:2]) + b"\n" + dumps_line(recs[2]))
    assert read_conversations(f) == recs[:3]


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (b"{oops\n", "c.jsonl:2: invalid JSON"),
        (dumps_line({"conversation": [{"input": "", "output": "正文"}]}), "c.jsonl:2: a pretraining record"),
        (dumps_line({"conversation": [{"input": "问", "output": "答"},
                                      {"system": SYS, "input": "q", "output": "a"}]}),
         "c.jsonl:2: turn 2: 'system' is only allowed on the first turn"),
        (dumps_line(conv(("问", "答<|im_end|>"))), "c.jsonl:2: turn 1 output contains the template marker"),
    ],
)
def test_read_conversations_names_file_and_line_of_a_bad_record(
    tmp_path: Path, bad: bytes, fragment: str
) -> None:
    f = tmp_path / "c.jsonl"
    f.write_bytes(dumps_line(RECORDS["one-turn"]) + bad)
    with pytest.raises(InputError, match=fragment.replace("|", r"\|")):
        read_conversations(f)


# ---- CLI -------------------------------------------------------------------


def cli(argv: list[str], settings: Settings) -> int:
    """The real command line, with a settings file that names out_dir."""
    path = Path(settings.paths.out_dir).parent / "settings.toml"
    path.write_text(f"[paths]\nout_dir = {str(settings.paths.out_dir)!r}\n", encoding="utf-8")
    return run.main(["--settings", str(path), *argv])


@pytest.fixture
def out_settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(Settings(), paths=PathSettings(out_dir=str(tmp_path / "out")))


def test_cli_defaults_read_conversations_jsonl_and_write_under_out_export(
    out_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    out = out_settings.out_dir
    out.mkdir()
    records = list(RECORDS.values())
    (out / "conversations.jsonl").write_bytes(b"".join(dumps_line(r) for r in records))
    assert cli(["export", "--format", "alpaca"], out_settings) == 0
    written = out / "export" / "conversations_alpaca.jsonl"
    assert [from_alpaca(r) for r in read_jsonl(written)] == records
    assert written.read_bytes().endswith(b"\n")
    assert "exported 4 conversations (7 turns) as alpaca" in capsys.readouterr().out


def test_cli_options_name_output_dir_ratio_and_seed(tmp_path: Path, out_settings: Settings) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(dumps_line(conv((f"q{i}", f"a{i}"))) for i in range(10)))
    argv = ["export", "--format", "sharegpt", "--input", str(src), "--output-dir",
            str(tmp_path / "lf"), "--val-ratio", "0.2", "--seed", "5", "--name", "wk"]
    assert cli(argv, out_settings) == 0
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text(encoding="utf-8"))
    assert sorted(info) == ["wk_train", "wk_val"]
    assert len(read_jsonl(tmp_path / "lf" / "wk_val.jsonl")) == 2


def test_cli_pretrain_reads_the_pretraining_file_by_default(
    out_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    out = out_settings.out_dir
    out.mkdir()
    (out / "incremental_pretraining.jsonl").write_bytes(
        b"".join(dumps_line(pretraining(t)) for t in ("甲", "乙")))
    assert cli(["export", "--format", "pretrain"], out_settings) == 0
    written = out / "export" / "incremental_pretraining_pretrain.jsonl"
    assert read_jsonl(written) == [{"text": "甲"}, {"text": "乙"}]
    assert "exported 2 pretraining texts as pretrain" in capsys.readouterr().out
    # Conversation records are not pretraining text: refused, naming the line.
    (out / "conversations.jsonl").write_bytes(dumps_line(RECORDS["one-turn"]))
    assert cli(["export", "--format", "pretrain", "--input", str(out / "conversations.jsonl")],
               out_settings) == 2
    assert "conversations.jsonl:1: a conversation record" in capsys.readouterr().err


def test_cli_missing_or_empty_input_exits_2(tmp_path: Path, out_settings: Settings) -> None:
    parser = argparse.ArgumentParser()
    run.add_export_parser(parser.add_subparsers())
    args = parser.parse_args(["export", "--format", "openai", "--input", str(tmp_path / "nope.jsonl")])
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        args.func(args, out_settings)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert cli(["export", "--format", "openai", "--input", str(empty)], out_settings) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["export"],
        ["export", "--format", "csv"],
        ["export", "--format", "alpaca", "--val-ratio", "1"],
        ["export", "--format", "alpaca", "--val-ratio", "abc"],
        ["export", "--format", "alpaca", "--name", "../x"],
    ],
)
def test_cli_bad_arguments_are_usage_errors(argv: list[str], out_settings: Settings) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(argv, out_settings)
    assert exc.value.code == 2
