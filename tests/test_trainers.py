"""Opt-in: the outputs go through the trainers' own loaders the way README's
"Train on it" says, so the recipes cannot rot. Each test is skipped unless its
trainer is importable (CI installs neither); run them in a venv that has one:

    pip install -e '.[test]' xtuner==0.2.0          # or llamafactory==0.9.5
    python -m pytest -m trainers tests/test_trainers.py

No model is downloaded: both get a small real tokenizer built here
(WordLevel over the test's own words, with Qwen's chat markers as special
tokens) and the Qwen chat template (XTuner's qwen_chat, LLaMA-Factory's qwen).
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


def lf_load(dataset_dir: Path, stage: str, dataset: str, eval_dataset: str | None = None) -> dict[str, Any]:
    """README's LLaMA-Factory config through its own get_dataset: dataset_info
    parsing, file loading, format conversion, the qwen template, tokenizing."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    tok = tokenizer()
    data = DataArguments(dataset_dir=str(dataset_dir), dataset=dataset, eval_dataset=eval_dataset,
                         template="qwen", cutoff_len=1024, overwrite_cache=True)
    model = ModelArguments(model_name_or_path="unused")
    training = Seq2SeqTrainingArguments(output_dir=str(dataset_dir / "run"))
    template = get_template_and_fix_tokenizer(tok, data)
    return get_dataset(template, model, data, training, stage=stage, tokenizer=tok, processor=None)


def trained(row: dict[str, Any]) -> list[int]:
    return [t for t in row["labels"] if t != -100]


def answers_ids(record: dict[str, Any]) -> list[int]:
    """The tokens a trainer should learn from ``record``: each answer and its end marker."""
    tok = tokenizer()
    ids: list[int] = []
    for _, answer in turns(record):
        ids += tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
    return ids


def system_count(row: dict[str, Any]) -> int:
    tok = tokenizer()
    return tok.decode(row["input_ids"]).count(" ".join(tok.tokenize(SYSTEM)))


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "openai"])
def test_llama_factory_trains_only_the_answers_of_each_export_and_split(outputs: Path, fmt: str) -> None:
    pytest.importorskip("llamafactory")
    out = outputs / "export"
    export(CONVERSATIONS, fmt, out, "wk", val_ratio=0.25, seed=1)
    loaded = lf_load(out, "sft", "wk_train", "wk_val")
    rows = list(loaded["train_dataset"]) + list(loaded["eval_dataset"])
    assert len(loaded["eval_dataset"]) == 1 and len(rows) == len(CONVERSATIONS)
    assert sorted(trained(r) for r in rows) == sorted(answers_ids(c) for c in CONVERSATIONS)
    # The system prompt once per conversation, and nothing added to it or
    # anywhere: every word of the data is in the vocabulary, so an unknown
    # token is text the loader made up (0.9.5's own "openai" formatting adds
    # "detailed thinking off" to the system prompt).
    assert all(system_count(r) == 1 for r in rows)
    assert not any(tokenizer().unk_token_id in r["input_ids"] for r in rows)


def test_llama_factory_pretrains_on_the_pretraining_export(outputs: Path) -> None:
    pytest.importorskip("llamafactory")
    from pipeline.outputs.export import read_records

    out = outputs / "export"
    export(read_records(outputs / "incremental_pretraining.jsonl", "pretraining"), "pretrain", out, "pt")
    rows = list(lf_load(out, "pt", "pt")["train_dataset"])
    tok = tokenizer()
    # stage pt packs the texts, each ended by the end marker, into blocks of cutoff_len.
    ids = [t for r in rows for t in r["input_ids"]]
    assert ids == [t for c in CHUNKS for t in tok.encode(c, add_special_tokens=False) + [tok.eos_token_id]]


def test_llama_factory_mixes_conversations_and_identity_by_name(outputs: Path) -> None:
    pytest.importorskip("llamafactory")
    out = outputs / "export"
    export(CONVERSATIONS[:2], "sharegpt", out, "conversations_sharegpt")
    export(CONVERSATIONS[2:], "sharegpt", out, "identity_sharegpt")
    rows = list(lf_load(out, "sft", "conversations_sharegpt,identity_sharegpt")["train_dataset"])
    assert sorted(trained(r) for r in rows) == sorted(answers_ids(c) for c in CONVERSATIONS)
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


def xtuner_load(data_files: str | list[str], template: Any) -> Any:
    """README's XTuner dataset config, as the config dicts it shows: the JSON
    files, dataset_map_fn=None (our records are XTuner's own format), the
    chat template (None for pretraining)."""
    from datasets import load_dataset
    from xtuner.dataset import process_hf_dataset
    from xtuner.dataset.map_fns import template_map_fn_factory

    return process_hf_dataset(
        dataset=dict(type=load_dataset, path="json", data_files=data_files),
        tokenizer=tokenizer(), max_length=512,
        dataset_map_fn=None,
        template_map_fn=None if template is None else dict(type=template_map_fn_factory, template=template),
        remove_unused_columns=True, shuffle_before_pack=False, pack_to_max_length=False)


def test_xtuner_trains_only_the_answers_of_every_conversation(outputs: Path) -> None:
    pytest.importorskip("xtuner")
    from xtuner.utils import PROMPT_TEMPLATE

    # Mixed as README shows: the conversations and the identity records, two data_files.
    write_jsonl_atomic(outputs / "conversations.jsonl", CONVERSATIONS[:3])
    write_jsonl_atomic(outputs / "identity.jsonl", CONVERSATIONS[3:])
    ds = xtuner_load([str(outputs / "conversations.jsonl"), str(outputs / "identity.jsonl")],
                     PROMPT_TEMPLATE.qwen_chat)
    tok = tokenizer()
    assert len(ds) == len(CONVERSATIONS)
    for row, record in zip(ds, CONVERSATIONS, strict=True):
        trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        expected = []
        for _, answer in turns(record):
            expected += tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
        assert trained == expected
        # The system prompt once, and no text the loader made up.
        assert system_count(row) == 1
        assert tok.unk_token_id not in row["input_ids"]


def test_xtuner_reads_the_pretraining_file_with_no_map_fns(outputs: Path) -> None:
    pytest.importorskip("xtuner")
    ds = xtuner_load(str(outputs / "incremental_pretraining.jsonl"), None)
    tok = tokenizer()
    assert len(ds) == len(CHUNKS)
    for row, chunk in zip(ds, CHUNKS, strict=True):
        assert [t for t in row["labels"] if t != -100] == tok.encode(chunk, add_special_tokens=False) + [
            tok.eos_token_id]
