"""The answer gate inside a run: what it rejects, changes and moves is in the
ledger rows, the dataset and the report (real clients against the fakes)."""

from __future__ import annotations

from pathlib import Path

import orjson

from pipeline.qa.stage import run_qa
from tests.fakes.huixiangdou_server import REFUSAL_ANSWER, FakeHuixiangdou
from tests.fakes.llm_fixtures import FAKE_KEY
from tests.fakes.llm_server import FakeLLM
from tests.fakes.loops import BOTH_LOOPS
from tests.test_qa import make_settings

pytestmark = BOTH_LOOPS


async def test_refusals_are_rejected_and_reference_lists_move_into_refs(tmp_path: Path) -> None:
    scenarios = iter(["refusal_answer", "reference_list"])
    chosen: dict[str, str] = {}

    def responder(question: str) -> str:
        return chosen.setdefault(question, next(scenarios, "answered"))

    async with FakeLLM(api_key=FAKE_KEY, models=("fake-model",), shape="mixed") as llm, \
            FakeHuixiangdou(responder=responder) as hxd:
        settings = make_settings(tmp_path, llm, [hxd])
        result = await run_qa(settings, install_signals=False)

    assert result.status == "complete"
    rows = {r["question"]: r for r in map(orjson.loads, (settings.state_dir / "answers.jsonl").read_bytes().splitlines())}
    by_scenario = {v: rows[q] for q, v in chosen.items()}
    refused = by_scenario["refusal_answer"]
    assert (refused["kind"], refused["reason"], refused["raw_answer"]) == ("rejected", "refusal", REFUSAL_ANSWER)
    listed = by_scenario["reference_list"]
    assert listed["kind"] == "answered"
    assert listed["refs"] == ["wukong.md", "角色设定.md"]  # the server's, then the answer's own, once each
    assert "参考资料" not in listed["answer"] and listed["answer"].startswith("关于「")
    # The fake's answers say "根据知识库记载，": the gate rewrites that away, and says so.
    assert "references" in listed["edits"] and "material_rewritten" in listed["edits"]
    plain = next(rows[q] for q, v in chosen.items() if v == "answered")
    assert "根据知识库记载" not in plain["answer"] and plain["edits"] == ["material_rewritten"]

    dataset = (settings.out_dir / "conversations.jsonl").read_text(encoding="utf-8")
    assert REFUSAL_ANSWER not in dataset and "参考资料" not in dataset
    report = (settings.out_dir / "report.md").read_text(encoding="utf-8")
    assert "| refusal | 1 |" in report
    assert f"material_rewritten {len(chosen) - 1}" in report and "references 1" in report
