"""The QA stage with the embedded retrieval backend: nothing but an LLM key
makes a grounded dataset whose refs point at real corpus files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from pipeline.qa.stage import run_qa
from pipeline.settings import parse_settings
from pipeline.outputs.validate import validate_file
from tests.fakes.llm_fixtures import FAKE_KEY, FAKE_KEY_ENV
from tests.fakes.llm_server import FakeLLM
from tests.test_local_rag import FACTS, grounded_responder, write_corpus
from tests.fakes.loops import BOTH_LOOPS

pytestmark = BOTH_LOOPS

# Both in Chinese: a zh run screens out questions in another language before any backend sees them.
OFF_TOPIC = ("量子纠缠实验的诺贝尔奖得主是谁？", "怎样在家里烤出好吃的酸面包？")
QUESTIONS = [*FACTS, *OFF_TOPIC]
# The English question about the English file is screened out of this zh run (wrong_language).
ZH_FACTS = {q: fact for q, fact in FACTS.items() if not q.isascii()}


def responder(messages: list[dict[str, str]]) -> str:
    """Question-writer prompts get the crafted questions; answer prompts are
    answered only from the material they carry."""
    text = messages[-1]["content"]
    if "问题" in text and "个不同的问题" in text:
        return orjson.dumps(QUESTIONS).decode()
    return grounded_responder(messages)


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",), responder=responder) as fake:
        yield fake


async def test_local_backend_run_makes_a_grounded_dataset_with_real_refs(tmp_path: Path, llm: FakeLLM) -> None:
    data = write_corpus(tmp_path / "data")
    settings = parse_settings(
        {
            "paths": {"data_dir": str(data), "out_dir": str(tmp_path / "out")},
            "llm": {"base_url": llm.base_url, "model": "fake-model", "api_key_env": FAKE_KEY_ENV,
                    "max_retries": 0},
            "questions": {"aspects": ["游戏概述"], "per_aspect": len(QUESTIONS) - 1, "batch_size": len(QUESTIONS),
                          "max_chars": 80},
            "rag": {"backend": "local"},
            "conversations": {"min_answer_chars": 2},
        },
        source="test",
        environ={FAKE_KEY_ENV: FAKE_KEY},
    )

    result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    answers = {
        r["question"]: r
        for r in map(orjson.loads, (settings.state_dir / "answers.jsonl").read_bytes().splitlines())
    }
    assert len(ZH_FACTS) == len(FACTS) - 1 and not set(FACTS) - set(ZH_FACTS) & set(answers)
    for question, (fact, source) in ZH_FACTS.items():
        row = answers[question]
        assert row["kind"] == "answered" and fact in row["answer"]
        assert source in row["refs"]
        assert all((data / ref).is_file() for ref in row["refs"])
    for question in OFF_TOPIC:
        assert answers[question]["kind"] == "skipped"
    records = [orjson.loads(x) for x in (settings.out_dir / "conversations.jsonl").read_bytes().splitlines()]
    assert sorted(r["conversation"][0]["input"] for r in records) == sorted(ZH_FACTS)
    assert validate_file(settings.out_dir / "conversations.jsonl").errors == []
