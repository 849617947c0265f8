"""The identity command's driver: lock the output folder, resume from the
identity ledger, have the LLM write questions and answers for every
(language, kind) still short of its target, and always leave a usable
``identity.jsonl`` and an up-to-date report.

The machinery is the QA stage's: :class:`~pipeline.services.llm.LLMClient`
(limits, retries, quota errors), the question parser, the near-duplicate
filter, the ledger writer (each row appended before the next await, so a
killed run loses nothing it paid for) and the run lock. A rerun reads the
ledger and asks only for what is missing: a finished job makes no call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import QuotaExhausted, RetryableError, SettingsError, UnusableReply
from pipeline.outputs.identity import identity_ledger, load_identity, write_identity
from pipeline.outputs.report import REPORT_JSON, build_report, write_report
from pipeline.store.view import open_ledgers, state_from_ledgers
from pipeline.qa.dedup import Deduper
from pipeline.qa.identity import (
    IdentityQuestion,
    IdentityState,
    Kind,
    answer_messages,
    answer_row,
    batch_row,
    check_answer,
    question_messages,
    question_row,
    screen_question,
    targets,
)
from pipeline.qa.questions import parse_question_list, question_id
from pipeline.services.llm import LLMClient
from pipeline.settings import Settings
from pipeline.store.ledger import LedgerWriter, RunLock

__all__ = ["IdentityResult", "run_identity"]

log = logging.getLogger(__name__)

# Accepted questions shown to the question writer as "write different ones".
_SAMPLE = 20


@dataclass(slots=True)
class IdentityResult:
    status: str                      # complete, short, quota or interrupted
    records: int
    target: int
    path: Path
    detail: str = ""
    short: dict[str, str] = field(default_factory=dict)   # "lang/kind" -> why it fell short
    usage: dict[str, Any] = field(default_factory=dict)
    # The command that runs this again, with the options the user gave.
    again: str = "python run.py identity"

    def line(self) -> str:
        """The closing summary: how it ended, what it made, what it cost, what to do."""
        u = self.usage
        text = (f"identity {self.status}: {self.records}/{self.target} records in {self.path}; "
                f"LLM calls {int(u.get('calls', 0))}, tokens {int(u.get('prompt_tokens', 0))}+"
                f"{int(u.get('completion_tokens', 0))}, cost {u.get('cost', 0.0):.4f}")
        if self.detail:
            text += f"\n{self.detail}"
        for slot, why in self.short.items():
            text += f"\n{slot}: {why}"
        if self.status in ("quota", "interrupted"):
            text += f"\nrun `{self.again}` again to resume where it stopped"
        elif self.status == "short":
            text += (f"\nrun `{self.again}` again to try once more, or change the "
                     "[identity] settings named above; the report has the rejected answers by reason")
        return text


class _Maker:
    """Fills every (language, kind) slot up to its target."""

    def __init__(self, settings: Settings, state: IdentityState, llm: LLMClient, writer: LedgerWriter) -> None:
        self.settings = settings
        self.ident = settings.identity
        self.state = state
        self.llm = llm
        self.writer = writer
        self.short: dict[str, str] = {}
        self.dedup = Deduper(settings.questions.near_duplicate_threshold)
        self.dedup.seed(q.text for q in state.questions.values())

    async def record(self, row: dict[str, Any]) -> None:
        # On file and in the state in one step (no await between), so a
        # concurrent slot never sees one without the other.
        written = self.writer.record("identity", row)
        self.state.apply(row)
        await written

    async def run(self) -> None:
        # Fail before anything is paid for when the service is misconfigured.
        await self.llm.probe()
        async with asyncio.TaskGroup() as tg:
            for (lang, kind), target in targets(self.ident.languages, self.ident.records).items():
                tg.create_task(self._fill(lang, kind, target))

    async def _fill(self, lang: str, kind: Kind, target: int) -> None:
        stale = 0
        while True:
            qs = self.state.in_slot(lang, kind)
            done = sum(q.answer is not None for q in qs)
            if done >= target:
                if target:
                    log.info("identity %s/%s: %d/%d records", lang, kind, done, target)
                return
            given_up = [q for q in qs if q.answer is None and q.attempts >= self.ident.max_attempts]
            if len(given_up) >= target:
                # As many questions lost as wanted: the model will not answer as the assistant.
                reasons = Counter(r for q in given_up for r in q.reasons)
                self.short[f"{lang}/{kind}"] = (
                    f"{done}/{target}: {len(given_up)} questions given up after "
                    f"{self.ident.max_attempts} rejected answers each ({_counts(reasons)})")
                return
            open_ = [q for q in qs if q.answer is None and q.attempts < self.ident.max_attempts]
            if len(open_) < target - done and stale < self.settings.questions.max_stale_rounds:
                new = await self._write_questions(lang, kind, qs)
                stale = 0 if new else stale + 1
                continue
            if open_:
                # Enough questions, or as many as the LLM would write: answer them.
                await asyncio.gather(*(self._answer(q) for q in open_[: target - done]))
                continue
            self.short[f"{lang}/{kind}"] = (
                f"{done}/{target}: the LLM wrote no new usable question in {stale} calls in a row")
            return

    async def _write_questions(self, lang: str, kind: Kind, known: list[IdentityQuestion]) -> int:
        n = self.ident.batch_size
        sample = [q.text for q in known[-_SAMPLE:]]
        messages = question_messages(self.state.facts, lang, kind, n, self.ident.max_question_chars, sample)
        try:
            reply = await self.llm.chat(messages)
        except RetryableError as exc:
            log.warning("identity %s/%s: no questions this round: %s", lang, kind, exc)
            return 0
        except UnusableReply as exc:  # refused by the content filter, or nothing usable
            log.warning("identity %s/%s: no questions this round: %s", lang, kind, exc)
            await self.record(batch_row(lang, kind, n, 0, {f"reply_{exc.kind}": 1}, (0, 0)))
            return 0
        items = parse_question_list(reply.text)
        dropped: Counter[str] = Counter()
        if not items:
            dropped["unparsed"] += 1
        fresh: list[str] = []
        for text in items:
            reason = screen_question(text, self.state.facts, lang, self.ident.max_question_chars)
            if reason is None:
                fresh.append(text.strip())
            else:
                dropped[reason] += 1
        rows = []
        for text, reason in zip(fresh, self.dedup.add_many(fresh), strict=True):
            if reason is None:
                rows.append(question_row(IdentityQuestion(question_id(text), lang, kind, text)))
            else:
                dropped[reason] += 1
        await self.record(batch_row(lang, kind, n, len(items), dropped,
                                     (reply.prompt_tokens, reply.completion_tokens)))
        for row in rows:
            await self.record(row)
        return len(rows)

    async def _answer(self, q: IdentityQuestion) -> None:
        max_chars = self.ident.max_answer_chars
        try:
            reply = await self.llm.chat(answer_messages(self.state.facts, q.lang, q.text, max_chars))
        except (RetryableError, UnusableReply) as exc:
            # Counted as an attempt: a question the service keeps failing on (or the
            # provider keeps refusing) is given up, not looped on.
            reason = f"reply_{exc.kind}" if isinstance(exc, UnusableReply) else "llm_error"
            log.warning("identity answer to %r lost (%s): %s", q.text, reason, exc)
            await self.record(answer_row(q.id, "", reason, (0, 0)))
            return
        text = reply.text.strip()
        reason = check_answer(text, self.state.facts, q.lang, max_chars)
        if reason is not None:
            log.info("identity answer rejected (%s): %r -> %r", reason, q.text, text[:80])
        await self.record(answer_row(q.id, text, reason, (reply.prompt_tokens, reply.completion_tokens)))


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.most_common())


def _check_settings(settings: Settings) -> None:
    if not settings.identity.name.strip():
        raise SettingsError(
            f"{settings.source}: [identity] name: set the assistant's name; every identity answer must say it")


async def run_identity(settings: Settings, *, install_signals: bool = True,
                       on_start: Callable[[asyncio.Task[None]], None] | None = None) -> IdentityResult:
    """Make (or resume) the identity records to their target or to a clean stop.
    ``on_start`` receives the task doing the work (a test's stop: cancel it)."""
    _check_settings(settings)
    ident = settings.identity
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(settings.out_dir):
        state = load_identity(settings, repair=True)
        want = targets(ident.languages, ident.records)
        if all(sum(q.answer is not None for q in state.in_slot(*slot)) >= n for slot, n in want.items()):
            # Nothing to make: no client, no probe, not one request.
            return _finish(settings, state, "complete", "", {}, {})
        made = sum(min(n, sum(q.answer is not None for q in state.in_slot(*slot))) for slot, n in want.items())
        log.info("identity: %d of %d records made; writing the rest with %s", made, ident.records,
                 settings.llm.model)
        async with LLMClient(settings.llm) as llm:
            writer = LedgerWriter({"identity": identity_ledger(settings)}, fsync=settings.run.fsync,
                                  fsync_interval_s=settings.run.fsync_interval_s)
            writer_task = asyncio.create_task(writer.run())
            maker = _Maker(settings, state, llm, writer)
            work = asyncio.create_task(maker.run())
            restore = _install_signal_handlers(work) if install_signals else (lambda: None)
            if on_start is not None:
                on_start(work)
            try:
                status, detail = await _outcome(work)
                if status == "complete" and maker.short:
                    status = "short"
                await maker.record({"type": "run_end", "status": status, "detail": detail,
                                    "time": time.time()})
            except BaseException:
                # A service error a person must fix (a refused key, say): the
                # records made so far are still written, then the error is told.
                with contextlib.suppress(Exception):
                    write_identity(settings, state)
                raise
            finally:
                restore()
                writer.close()
                await asyncio.shield(writer_task)
            return _finish(settings, state, status, detail, maker.short, llm.usage.snapshot())


async def _outcome(work: asyncio.Task[None]) -> tuple[str, str]:
    """How ``work`` ended: ("complete", ""), ("quota", why) or ("interrupted", why);
    any other error propagates."""
    quota: list[BaseException] = []
    try:
        try:
            await work
        except* QuotaExhausted as group:
            quota.extend(group.exceptions)
    except asyncio.CancelledError:
        work.cancel()  # when it is this task that was cancelled, stop the work too
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            current.uncancel()
        return "interrupted", "stopped by a signal; every answer received is kept"
    if quota:
        return "quota", f"the LLM quota or balance is exhausted: {quota[0]}"
    return "complete", ""


def _finish(settings: Settings, state: IdentityState, status: str, detail: str,
            short: dict[str, str], usage: dict[str, Any]) -> IdentityResult:
    out = settings.out_dir / settings.identity.output_name
    count = write_identity(settings, state)
    _refresh_report(settings)
    return IdentityResult(status, count, settings.identity.records, out, detail, short, usage,
                          again=settings.command("identity"))


def _refresh_report(settings: Settings) -> None:
    """Rewrite report.md/json with today's identity section; the QA parts are
    built from the QA ledgers, the last QA run's own section is kept. A
    failure is logged, never raised: the records are what matters."""
    try:
        previous: dict[str, Any] = {}
        path = settings.out_dir / REPORT_JSON
        if path.exists():
            previous = json.loads(path.read_text(encoding="utf-8"))
        with open_ledgers(settings.state_dir) as ledgers:
            qa_state = state_from_ledgers(settings, ledgers)
            report = build_report(settings, ledgers, qa_state, None,
                                  conversations=(previous.get("conversations") or {}).get("in_dataset"))
        report["run"] = previous.get("run")
        write_report(settings.out_dir, report)
    except Exception as exc:  # noqa: BLE001 - the report is a courtesy
        log.warning("could not update the report under %s: %s", settings.out_dir, exc)


def _install_signal_handlers(work: asyncio.Task[None]) -> Callable[[], None]:
    """SIGINT/SIGTERM stop the work: calls in flight are dropped, every row
    already recorded stays, and the records are written from them."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not on this platform, or not the main thread (a caller's worker thread).
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, work.cancel)
            installed.append(sig)

    def restore() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return restore
