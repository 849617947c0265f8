"""Pure HuixiangDou transforms: the final-step rule, both body shapes, stream decoding."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from pipeline.errors import StreamFormatError
from pipeline.services.hxd_protocol import (
    EMPTY_ANSWER,
    IRRELEVANT_MATERIAL,
    StreamDecoder,
    classify,
    llm_outage,
    parse_inference_body,
    split_references,
)
from tests.fakes.huixiangdou_server import STATES


def st(state: str, response: str = "", refs: list[str] | None = None) -> dict[str, Any]:
    return {"state": STATES.get(state, state), "response": response, "refs": refs or []}


ANSWER = "《黑神话：悟空》于2024年8月20日发行。"


@pytest.mark.parametrize(
    ("steps", "kind", "state", "answer"),
    [
        pytest.param([st("init"), st("success", ANSWER, ["wukong.md"])],
                     "answered", "success", ANSWER, id="answered"),
        pytest.param([st("success", f"  {ANSWER}\n")], "answered", "success", ANSWER,
                     id="answer-stripped"),
        pytest.param([st("init"), st("success", ANSWER), *[st("irrelevant_answer")] * 3],
                     "vetoed", "Irrelevant answer.", "", id="success-then-irrelevant-is-not-an-answer"),
        pytest.param([st("init"), st("success", ANSWER), st("irrelevant_answer", ANSWER)],
                     "vetoed", "Irrelevant answer.", "", id="veto-step-with-text-is-not-an-answer"),
        pytest.param([st("init"), st("success", ANSWER), st("prohibited")],
                     "vetoed", STATES["prohibited"], "", id="safety-veto"),
        pytest.param([st("init"), st("success", "")], "vetoed", EMPTY_ANSWER, "", id="blank-success"),
        pytest.param([st("success", " \r\n\t")], "vetoed", EMPTY_ANSWER, "", id="whitespace-success"),
        pytest.param([st("init")] * 4, "skipped", IRRELEVANT_MATERIAL, "", id="irrelevant-material"),
        pytest.param([st("success", ANSWER), st("init")], "skipped", IRRELEVANT_MATERIAL, "",
                     id="only-last-step-counts"),
        pytest.param([st("short")], "skipped", "Query length too short", "", id="short"),
        pytest.param([st("init"), st("not_question")], "skipped", STATES["not_question"], "",
                     id="not-a-question"),
        pytest.param([st("init"), st("no_topic")], "skipped", STATES["no_topic"], "", id="no-topic"),
        pytest.param([st("init"), st("unrelated")], "skipped", STATES["unrelated"], "", id="unrelated"),
        pytest.param([st("init"), st("web_search_fail")], "failed", STATES["web_search_fail"], "",
                     id="web-search-fail"),
        pytest.param([st("init"), st("no_search_result")], "failed", "No search result.", "",
                     id="no-search-result"),
        pytest.param([st("init"), st("sourcegraph")], "failed", STATES["sourcegraph"], "",
                     id="sourcegraph"),
        pytest.param([st("init"), st("sourcegraph_llm")], "failed", STATES["sourcegraph_llm"], "",
                     id="sourcegraph-llm"),
        pytest.param([{"state": "query is not a question"}], "skipped", "query is not a question", "",
                     id="outage-2024-09-bare-step"),
        pytest.param([st("init"), st("success", ""), st("irrelevant_answer")],
                     "vetoed", "Irrelevant answer.", "", id="outage-2024-10"),
        pytest.param([st("init"), st("Some new state.", ANSWER)], "failed", "Some new state.", "",
                     id="unknown-state-kept-as-failed"),
        pytest.param([], "failed", "no steps in response", "", id="empty-step-list"),
        pytest.param([{"response": ANSWER}], "failed", "malformed state: None", "",
                     id="step-without-state"),
    ],
)
def test_classify_applies_the_final_step_rule(
    steps: list[dict[str, Any]], kind: str, state: str, answer: str
) -> None:
    outcome = classify(steps)
    assert (outcome.kind, outcome.state, outcome.answer) == (kind, state, answer)


def test_classify_takes_refs_from_the_last_step_deduplicated() -> None:
    steps = [st("init", refs=["a.md"]), st("success", ANSWER, ["wukong.md", "b.md", "wukong.md", ""])]
    assert classify(steps).refs == ("wukong.md", "b.md")


@pytest.mark.parametrize(
    ("text", "refs", "answer"),
    [
        ("**References:**\r\n* wukong.md\r\n\r\n答案在此", ("wukong.md",), "答案在此"),
        ("**References:**\r\n* a.md\r\n* b.md\r\n\r\n第一行\r\n\r\n第二段", ("a.md", "b.md"),
         "第一行\r\n\r\n第二段"),
        ("**References:**\n* a.md\n\n答案", ("a.md",), "答案"),
        ("**References:**\r\n* a.md\r\n答案紧跟", ("a.md",), "答案紧跟"),
        ("**References:**\r\n\r\n", (), ""),
        ("没有引用头的回答", (), "没有引用头的回答"),
        ("", (), ""),
    ],
)
def test_split_references(text: str, refs: tuple[str, ...], answer: str) -> None:
    assert split_references(text) == (refs, answer)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"step": [st("init"), st("success", ANSWER, ["wukong.md"])], "debug": {}},
         ("answered", ANSWER, ("wukong.md",), "success")),
        ({"step": [st("init"), st("success", ANSWER), st("prohibited")]},
         ("vetoed", "", (), STATES["prohibited"])),
        (f"**References:**\r\n* wukong.md\r\n\r\n{ANSWER}", ("answered", ANSWER, ("wukong.md",), "success")),
        (ANSWER, ("answered", ANSWER, (), "success")),
        ("**References:**\r\n* wukong.md\r\n\r\n  ", ("vetoed", "", ("wukong.md",), EMPTY_ANSWER)),
        ("", ("vetoed", "", (), EMPTY_ANSWER)),
        ([1, 2], ("failed", "", (), "unexpected response body: [1, 2]")),
        ({"detail": "x"}, ("failed", "", (), 'unexpected response body: {"detail": "x"}')),
    ],
    ids=["step-answered", "step-vetoed", "bare-with-refs", "bare-no-refs", "bare-blank-after-refs",
         "bare-empty", "list", "dict-without-step"],
)
def test_parse_inference_body_accepts_both_shapes(body: Any, expected: tuple[Any, ...]) -> None:
    assert parse_inference_body(body) == expected


# ------------------------------------------------------------------ stream


def cumulative_docs(ensure_ascii: bool) -> tuple[bytes, list[dict[str, Any]]]:
    """A realistic stream: every progress point re-sends the cumulative steps.

    Strings hold quotes, backslashes, braces and 1- to 4-byte characters so
    that a scanner which gets strings or escapes wrong mis-cuts documents.
    """
    tricky = 'braces {[ ]} "quoted" back\\slash \\" 悟空 ≥ 𠀋 emoji 🐒 end'
    steps = [
        {"state": "Init state", "response": "", "refs": ["wukong.md"]},
        {"state": "success", "response": "关于「" + tricky + "」：答案。", "refs": ["wukong.md"]},
        {"state": "Irrelevant answer.", "response": "", "refs": []},
    ]
    docs = [{"step": steps[: i + 1], "debug": {"i": i, "nested": [[{}], []]}} for i in range(3)]
    sep = ["", "\n", " \r\n\t"]
    data = "".join(sep[i % 3] + json.dumps(d, ensure_ascii=ensure_ascii) for i, d in enumerate(docs))
    return data.encode(), docs


def feed_in_chunks(data: bytes, cuts: list[int]) -> list[Any]:
    decoder = StreamDecoder()
    out: list[Any] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        out.extend(decoder.feed(data[prev:cut]))
        prev = cut
    decoder.close()
    return out


@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "raw-utf8"])
@pytest.mark.parametrize("seed", range(12))
def test_stream_decoder_survives_random_chunking(seed: int, ensure_ascii: bool) -> None:
    data, docs = cumulative_docs(ensure_ascii)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), k=rng.randint(1, min(60, len(data) - 1))))
    assert feed_in_chunks(data, cuts) == docs


def test_stream_decoder_survives_one_byte_chunks() -> None:
    data, docs = cumulative_docs(ensure_ascii=False)
    assert feed_in_chunks(data, list(range(1, len(data)))) == docs


def test_stream_decoder_survives_every_single_split_point_including_inside_characters() -> None:
    doc = {"response": "悟空🐒\\\"}", "refs": ["黑神话.md"]}
    data = (json.dumps(doc, ensure_ascii=False) * 2).encode()
    multibyte_splits = 0
    for cut in range(1, len(data)):
        multibyte_splits += (data[cut] & 0xC0) == 0x80  # cut lands inside a character
        assert feed_in_chunks(data, [cut]) == [doc, doc], cut
    assert multibyte_splits > 0


def test_stream_decoder_returns_documents_as_soon_as_they_complete() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b'{"a": 1}{"b"') == [{"a": 1}]
    assert decoder.feed(b": 2}") == [{"b": 2}]
    assert decoder.feed(b"  ") == []
    decoder.close()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"step": [{"state": "Init', "inside a JSON document"),
        (b'{"a": 1}{"b": {', "inside a JSON document"),
        ('{"a": "悟'.encode()[:-1], "inside"),
    ],
    ids=["truncated-doc", "truncated-second-doc", "truncated-utf8"],
)
def test_stream_decoder_close_rejects_trailing_garbage(data: bytes, message: str) -> None:
    decoder = StreamDecoder()
    decoder.feed(data)
    with pytest.raises(StreamFormatError, match=message):
        decoder.close()


@pytest.mark.parametrize(
    "data",
    [
        "**References:**\r\n* wukong.md\r\n\r\n答案".encode(),
        b'{"a": 1}garbage',
        b'{"a" 1}',
        b"\xff\xfe{}",
    ],
    ids=["plain-text-stream", "text-after-doc", "malformed-doc", "not-utf8"],
)
def test_stream_decoder_rejects_what_is_not_concatenated_json(data: bytes) -> None:
    decoder = StreamDecoder()
    with pytest.raises(StreamFormatError):
        decoder.feed(data)
        decoder.close()


def _is_question(relation: str) -> dict[str, object]:
    return {"PreprocNode_is_question": {"input": "q", "default": 3, "relation": relation,
                                        "throttle": 6, "output": 3}}


@pytest.mark.parametrize(
    ("body", "outage"),
    [
        # 2024-09: the scoring call failed, so no judgement and the default score.
        ({"step": [{"state": "query is not a question", "response": "", "refs": []}],
          "debug": _is_question("")}, True),
        ({"step": [{"state": "query is not a question", "response": "", "refs": []}],
          "debug": _is_question("这是陈述。得分：2")}, False),
        # Without debug the body says nothing either way.
        ({"step": [{"state": "query is not a question"}]}, False),
        # 2024-10: an empty success, vetoed.
        ({"step": [{"state": "Init state", "response": "", "refs": ["a.md"]},
                   {"state": "success", "response": "", "refs": ["a.md"]},
                   *[{"state": "Irrelevant answer.", "response": "", "refs": []}] * 3]}, True),
        # A real veto keeps the vetoed text in its success step.
        ({"step": [{"state": "Init state", "response": "", "refs": ["a.md"]},
                   {"state": "success", "response": "不知道", "refs": ["a.md"]},
                   *[{"state": "Irrelevant answer.", "response": "不知道", "refs": []}] * 3]}, False),
        ({"step": [{"state": "Init state", "response": "", "refs": []}] * 4}, False),
        ("**References:**\r\n* a.md\r\n\r\n", False),
    ],
    ids=["2024-09", "real-not-a-question", "no-debug", "2024-10", "real-veto", "irrelevant", "bare-string"],
)
def test_llm_outage_signatures(body: object, outage: bool) -> None:
    assert (llm_outage(body) is not None) is outage
