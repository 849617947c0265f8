"""Opt-in: the outputs go through the trainers' own loaders the way README's
"Train on it" says, so the recipes cannot rot. Each test is skipped unless its
trainer is importable (CI installs neither); run them in a venv that has one:

    pip install -e '.[test]' xtuner==0.2.0          # or llamafactory==0.9.5
    python -m pytest -m trainers tests/test_trainers.py

No model is downloaded: XTuner's loader gets a small real tokenizer built
here (WordLevel, with Qwen's chat markers as special tokens); LLaMA-Factory's
dataset loader and format converters need none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.jsonl import write_jsonl_atomic
from pipeline.outputs.export import export

pytestmark = [pytest.mark.trainers, pytest.mark.filterwarnings("ignore")]

SYSTEM = "You are Ming, a gardening assistant."
CONVERSATIONS = [
    {"conversation": [{"system": SYSTEM, "input": "When to sow peas?", "output": "In early spring."}]},
    {"conversation": [{"system": SYSTEM, "input": "Which soil for roses?", "output": "Loamy, well drained."},
                      {"input": "How often to water them?", "output": "Twice a week in summer."}]},
    {"conversation": [{"system": SYSTEM, "input": "Who are you?", "output": "I am Ming."}]},
    {"conversation": [{"system": SYSTEM, "input": "Can tulips grow indoors?", "output": "Yes, in pots."}]},
]
CHUNKS = ["Peas like cool weather and are sown early.", "Roses need sun, loam and water."]


def turns(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["input"], t["output"]) for t in record["conversation"]]


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """conversations.jsonl and incremental_pretraining.jsonl as the pipeline writes them."""
    write_jsonl_atomic(tmp_path / "conversations.jsonl", CONVERSATIONS)
    write_jsonl_atomic(tmp_path / "incremental_pretraining.jsonl",
                       [{"conversation": [{"input": "", "output": c}]} for c in CHUNKS])
    return tmp_path


# ---- LLaMA-Factory -------------------------------------------------------------


def lf_load(dataset_dir: Path, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each named dataset through LLaMA-Factory's dataset_info parser, file
    loader and format converter, as `dataset: a,b` in a training config does."""
    from llamafactory.data.loader import _load_single_dataset
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    data = DataArguments(dataset_dir=str(dataset_dir), dataset=",".join(names))
    model = ModelArguments(model_name_or_path="unused")
    training = Seq2SeqTrainingArguments(output_dir=str(dataset_dir / "run"))
    return {attr.dataset_name: list(_load_single_dataset(attr, model, data, training))
            for attr in get_dataset_list(names, str(dataset_dir))}


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "openai"])
def test_llama_factory_loads_every_conversation_of_each_export_and_split(outputs: Path, fmt: str) -> None:
    pytest.importorskip("llamafactory")
    out = outputs / "export"
    export(CONVERSATIONS, fmt, out, "wk", val_ratio=0.25, seed=1)
    loaded = lf_load(out, ["wk_train", "wk_val"])
    rows = loaded["wk_train.jsonl"] + loaded["wk_val.jsonl"]
    assert len(loaded["wk_val.jsonl"]) == 1 and len(rows) == len(CONVERSATIONS)
    got = sorted(
        [(m["content"], r["_response"][0]["content"]) for m in r["_prompt"][-1:]]
        for r in rows
    )
    assert got == sorted([turns(c)[-1]] for c in CONVERSATIONS)
    for r in rows:
        assert r["_system"] == SYSTEM  # unchanged: nothing appended
        roles = [m["role"] for m in r["_prompt"]] + [m["role"] for m in r["_response"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
    two = next(r for r in rows if len(r["_prompt"]) == 3)
    assert [m["content"] for m in two["_prompt"]] == [
        "Which soil for roses?", "Loamy, well drained.", "How often to water them?"]


def test_llama_factory_loads_the_pretraining_export_as_text(outputs: Path) -> None:
    pytest.importorskip("llamafactory")
    from pipeline.outputs.export import read_records

    out = outputs / "export"
    export(read_records(outputs / "incremental_pretraining.jsonl", "pretraining"), "pretrain", out, "pt")
    rows = lf_load(out, ["pt"])["pt.jsonl"]
    assert [r["_prompt"][0]["content"] for r in rows] == CHUNKS


def test_llama_factory_mixes_conversations_and_identity_by_name(outputs: Path) -> None:
    pytest.importorskip("llamafactory")
    out = outputs / "export"
    export(CONVERSATIONS[:2], "sharegpt", out, "conversations_sharegpt")
    export(CONVERSATIONS[2:], "sharegpt", out, "identity_sharegpt")
    loaded = lf_load(out, ["conversations_sharegpt", "identity_sharegpt"])
    assert [len(v) for v in loaded.values()] == [2, 2]
    assert json.loads((out / "dataset_info.json").read_text(encoding="utf-8")).keys() == {
        "conversations_sharegpt", "identity_sharegpt"}


# ---- XTuner ----------------------------------------------------------------------


def tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = " ".join([SYSTEM, *CHUNKS, *(f"{q} {a}" for c in CONVERSATIONS for q, a in turns(c)),
                      "system user assistant"])
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[UNK]", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    tok.train_from_iterator([words], trainers.WordLevelTrainer(special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")


def xtuner_load(path: Path, template: Any) -> Any:
    """README's XTuner dataset config: the JSON file, dataset_map_fn=None (our
    records are XTuner's own format), the chat template (None for pretraining)."""
    from datasets import load_dataset
    from xtuner.dataset import process_hf_dataset
    from xtuner.dataset.map_fns import template_map_fn_factory

    return process_hf_dataset(
        dataset=load_dataset("json", data_files=str(path)), tokenizer=tokenizer(), max_length=512,
        dataset_map_fn=None,
        template_map_fn=None if template is None else template_map_fn_factory(template=template),
        remove_unused_columns=True, shuffle_before_pack=False, pack_to_max_length=False)


def test_xtuner_trains_only_the_answers_of_every_conversation(outputs: Path) -> None:
    pytest.importorskip("xtuner")
    from xtuner.utils import PROMPT_TEMPLATE

    ds = xtuner_load(outputs / "conversations.jsonl", PROMPT_TEMPLATE.qwen_chat)
    tok = tokenizer()
    assert len(ds) == len(CONVERSATIONS)
    for row, record in zip(ds, CONVERSATIONS, strict=True):
        trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        expected = []
        for _, answer in turns(record):
            expected += tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
        assert trained == expected
        # The system prompt once, at the start.
        text = tok.decode(row["input_ids"])
        assert text.count(" ".join(tok.tokenize(SYSTEM))) == 1


def test_xtuner_reads_the_pretraining_file_with_no_map_fns(outputs: Path) -> None:
    pytest.importorskip("xtuner")
    ds = xtuner_load(outputs / "incremental_pretraining.jsonl", None)
    tok = tokenizer()
    assert len(ds) == len(CHUNKS)
    for row, chunk in zip(ds, CHUNKS, strict=True):
        assert [t for t in row["labels"] if t != -100] == tok.encode(chunk, add_special_tokens=False) + [
            tok.eos_token_id]
