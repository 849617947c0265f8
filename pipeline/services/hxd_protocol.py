"""The HuixiangDou wire protocol, pure: request bodies, the two response
shapes, the final-step rule and the stream decoder. No I/O.

The protocol (``docs/huixiangdou-protocol.md``) in one paragraph: POST
``{"text": q, "image": ""}`` to ``/huixiangdou_inference``; the answer is the
LAST element of the ``step`` list, accepted only when its state is
``success`` and its response is not blank. The server's default pipeline
(``chat_with_repo``) instead answers a bare JSON string with a references
header. ``/huixiangdou_stream`` sends cumulative JSON documents concatenated
with no framing; the last one equals the inference body.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Sequence
from typing import Any

from pipeline.errors import StreamFormatError
from pipeline.services.answerer import Kind, Outcome

__all__ = [
    "EMPTY_ANSWER",
    "IRRELEVANT_MATERIAL",
    "START_COMMAND",
    "STATE_KINDS",
    "StreamDecoder",
    "LLM_JUDGED",
    "classify",
    "llm_outage",
    "parse_inference_body",
    "split_references",
]

START_COMMAND = "python3 -m huixiangdou.server --pipeline chat_in_group"

SUCCESS = "success"
INIT_STATE = "Init state"
# States this client makes up where the server's own string would mislead a
# user counting states: "Init state" as the last step means the material was
# irrelevant, and a blank "success" is an answer the server did not really give.
IRRELEVANT_MATERIAL = "Init state (irrelevant material)"
EMPTY_ANSWER = "success (empty answer)"

# The protocol's table of exact state strings. Unknown states are "failed":
# an unknown state is most likely a new failure mode, and a failed question
# is retried by a later run while a skipped one is not.
STATE_KINDS: dict[str, Kind] = {
    SUCCESS: "answered",
    INIT_STATE: "skipped",
    "Query length too short": "skipped",
    "query is not a question": "skipped",
    "The question does not have a topic. It might be a meaningless sentence.": "skipped",
    "Topics unrelated to the knowledge base. Updating good_questions and bad_questions "
    "can improve accuracy.": "skipped",
    "Irrelevant answer.": "vetoed",
    "Reply has a high relevance to prohibited topics.": "vetoed",
    "Web search fail, please check network, TOKEN and quota": "failed",
    "No search result.": "failed",
    "SourceGraph not result, please check token or input query": "failed",
    "LLM not response query with sg search": "failed",
}

# Rejections only a call to the server's own LLM can make: a real one takes
# that call's time (0.4-1 s), so one back in milliseconds means the call failed.
NOT_A_QUESTION = "query is not a question"
LLM_JUDGED = frozenset({
    NOT_A_QUESTION,
    "The question does not have a topic. It might be a meaningless sentence.",
})

_REFS_HEADER = "**References:**"


def _refs(raw: Any) -> tuple[str, ...]:
    """Reference names as a tuple of distinct non-blank strings, order kept."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        return ()
    seen: dict[str, None] = {}
    for item in raw:
        if isinstance(item, str) and item.strip():
            seen.setdefault(item.strip(), None)
    return tuple(seen)


def classify(steps: Sequence[Any]) -> Outcome:
    """Apply the final-step rule to a chat_in_group ``step`` list.

    Only the LAST step counts: an answer is accepted when its state is
    ``success`` and its response is not blank. A ``success`` followed by a
    veto state is therefore not an answer. The returned outcome carries kind,
    answer, refs and state; server, attempts and seconds are left for the
    caller to fill in.
    """
    if not isinstance(steps, (list, tuple)) or not steps:
        return Outcome(kind="failed", state="no steps in response")
    last = steps[-1]
    if not isinstance(last, dict):
        return Outcome(kind="failed", state=f"malformed step: {last!r:.80}")
    state = last.get("state")
    if not isinstance(state, str):
        state = f"malformed state: {state!r:.60}"
    response = last.get("response")
    response = response.strip() if isinstance(response, str) else ""
    refs = _refs(last.get("refs"))
    if state == SUCCESS:
        if response:
            return Outcome(kind="answered", answer=response, refs=refs, state=SUCCESS)
        return Outcome(kind="vetoed", refs=refs, state=EMPTY_ANSWER)
    if state == INIT_STATE:
        return Outcome(kind="skipped", refs=refs, state=IRRELEVANT_MATERIAL)
    return Outcome(kind=STATE_KINDS.get(state, "failed"), refs=refs, state=state)


def llm_outage(body: Any) -> str | None:
    """How a chat_in_group body shows that the LLM behind the server failed,
    or None when it does not.

    The 2024 server answers 200 when its own LLM is down or out of quota:
    2024-09 releases reject the question as ``query is not a question`` (one
    step) with an empty ``relation`` in ``debug.PreprocNode_is_question``,
    where a real judgement has the model's text; 2024-10 releases give a
    ``success`` step with an empty response (then veto it). Neither says
    anything about the question, and the same question is answered once the
    LLM is back.
    """
    if not isinstance(body, dict):
        return None
    steps = body.get("step")
    if not isinstance(steps, list) or not steps:
        return None
    for step in steps:
        if isinstance(step, dict) and step.get("state") == SUCCESS:
            response = step.get("response")
            if not (isinstance(response, str) and response.strip()):
                return "an empty 'success' step"
    last = steps[-1]
    if len(steps) == 1 and isinstance(last, dict) and last.get("state") == NOT_A_QUESTION:
        debug = body.get("debug")
        entry = debug.get("PreprocNode_is_question") if isinstance(debug, dict) else None
        if isinstance(entry, dict) and entry.get("relation") == "":
            return "'query is not a question' with no judgement in debug.PreprocNode_is_question"
    return None


def split_references(text: str) -> tuple[tuple[str, ...], str]:
    """Split chat_with_repo's ``**References:**\\r\\n* a.md\\r\\n\\r\\n<answer>``.

    Returns ``(refs, answer)``; text without the header is all answer.
    """
    if not text.startswith(_REFS_HEADER):
        return (), text
    lines = text[len(_REFS_HEADER):].splitlines(keepends=True)
    refs: list[str] = []
    i = 0
    if lines and not lines[0].strip():
        i = 1  # the line break right after the header
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith(("* ", "- ")):
            refs.append(line[2:].strip())
        elif line:
            break  # no blank separator: the answer starts here
        else:
            i += 1
            break
        i += 1
    return _refs(refs), "".join(lines[i:])


def parse_inference_body(body: Any) -> tuple[Kind, str, tuple[str, ...], str]:
    """Turn a decoded /huixiangdou_inference body into ``(kind, answer, refs, state)``.

    Accepts chat_in_group's ``{"step": [...]}`` object and chat_with_repo's
    bare string. The bare string carries no state, so a non-blank one reads
    as ``success`` and a blank one as :data:`EMPTY_ANSWER`.
    """
    if isinstance(body, dict) and "step" in body:
        o = classify(body["step"])
        return o.kind, o.answer, o.refs, o.state
    if isinstance(body, str):
        refs, answer = split_references(body)
        answer = answer.strip()
        if answer:
            return "answered", answer, refs, SUCCESS
        return "vetoed", "", refs, EMPTY_ANSWER
    return "failed", "", (), f"unexpected response body: {json.dumps(body, ensure_ascii=False)[:80]}"


# Characters that matter to the document scanner, outside and inside strings.
_STRUCTURAL = re.compile(r'[{}\[\]"]')
_IN_STRING = re.compile(r'["\\]')
_WS = " \t\r\n"


class StreamDecoder:
    """Decode concatenated JSON documents (``{...}{...}``) fed in arbitrary chunks.

    ``feed(bytes)`` returns the documents completed by that chunk. Chunks may
    split anywhere, including inside a multi-byte UTF-8 character. A small
    scanner (depth, in-string, escape) carried across chunks finds each
    document's end, so every byte is scanned once and each document is
    parsed once: linear in the stream's length however it is chunked.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._pieces: list[str] = []  # text of the document in progress
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes; return the documents they complete, in order."""
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError as e:
            raise StreamFormatError(f"stream is not UTF-8: {e}") from e
        return self._scan(text)

    def _scan(self, text: str) -> list[Any]:
        docs: list[Any] = []
        start = 0  # where the current document's text begins within `text`
        i = 0
        n = len(text)
        while i < n:
            if self._depth == 0:
                # Between documents: only whitespace or the start of one.
                while i < n and text[i] in _WS:
                    i += 1
                if i == n:
                    break
                if text[i] not in "{[":
                    raise StreamFormatError(
                        f"expected a JSON document, got {text[i:i + 40]!r}"
                        " (a plain-text stream comes from the chat_with_repo pipeline)"
                    )
                start = i
                self._depth = 1
                i += 1
                continue
            if self._in_string:
                if self._escape:
                    self._escape = False
                    i += 1
                    continue
                m = _IN_STRING.search(text, i)
                if m is None:
                    i = n
                    break
                i = m.end()
                if m.group() == "\\":
                    self._escape = True
                else:
                    self._in_string = False
                continue
            m = _STRUCTURAL.search(text, i)
            if m is None:
                i = n
                break
            i = m.end()
            c = m.group()
            if c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._pieces.append(text[start:i])
                    docs.append(self._parse("".join(self._pieces)))
                    self._pieces = []
                    start = i
        if self._depth > 0:
            self._pieces.append(text[start:])
        return docs

    def _parse(self, doc: str) -> Any:
        try:
            value, end = self._decoder.raw_decode(doc)
        except json.JSONDecodeError as e:
            raise StreamFormatError(f"malformed JSON document in stream: {e}") from e
        if end != len(doc):
            raise StreamFormatError(f"malformed JSON document in stream: {doc[:60]!r}")
        return value

    def close(self) -> None:
        """Declare the end of the stream; raise if it ended mid-document."""
        try:
            self._utf8.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise StreamFormatError(f"stream ended inside a UTF-8 character: {e}") from e
        if self._depth or self._pieces:
            tail = "".join(self._pieces)
            raise StreamFormatError(
                f"stream ended inside a JSON document ({len(tail)} characters: {tail[:60]!r}...)"
            )
