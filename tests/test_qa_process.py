"""The QA stage as the operator runs it: ``python run.py --settings S qa`` in a
real subprocess, against the fake LLM API and fake HuixiangDou servers, each in
a subprocess of its own, all on 127.0.0.1.

What only a real process can show: SIGKILL at any moment loses at most what
was in flight (and leaves ledgers the next run reads), Ctrl-C and SIGTERM stop
in two phases with exit code 130, and exhausted quota exits 75 with a resume
that redoes nothing. The fakes outlive the runs, so their request counts span
every run of a test.

Waiting here is always for a condition (a ledger reaching k lines, a fake's
in-flight count, a log line), polled with a deadline; nothing is timed.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.outputs.validate import validate_file
from tests.fakes.llm_fixtures import FAKE_KEY, FAKE_KEY_ENV

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ASPECTS = ["战斗系统", "游戏世界观", "主要角色", "游戏概述", "文化内涵"]
SYSTEM = "你是测试助手。"


def resume_hint(settings: Path) -> str:
    """The hint after a stop: it names the settings the run was given, or a
    resume would read the default settings on this out_dir."""
    return f"run `python run.py --settings {settings} qa` again to resume"

DEADLINE_S = 20.0  # bound on any wait; a healthy run needs a fraction of it

# Requests to the fakes must never go through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env[FAKE_KEY_ENV] = FAKE_KEY
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1"
    return env


def wait_until(
    cond: Callable[[], bool], what: str, *, proc: subprocess.Popen[bytes] | None = None,
    timeout: float = DEADLINE_S,
) -> None:
    """Poll ``cond`` until it holds; fail if ``proc`` exits first or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


# ---- the fakes, as subprocesses ---------------------------------------------------------


class Fake:
    """A fake service subprocess: ``python -m tests.fakes.<module> ...``."""

    def __init__(self, module: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"tests.fakes.{module}", "--port", "0", *args],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.url = ""
        self.summary = ""

    def ready(self) -> str:
        """Read the URL the fake prints first; bounded by the deadline."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(DEADLINE_S):
                pytest.fail(f"{self.proc.args} printed no URL")
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            self.stop()
            pytest.fail(f"{self.proc.args} did not start: {self.summary}")
        self.url = line
        return line

    def stats(self) -> dict[str, Any]:
        with _OPENER.open(f"{self.url}/_fake/stats", timeout=5) as resp:
            stats: dict[str, Any] = json.loads(resp.read())
        return stats

    def stop(self) -> str:
        """SIGTERM; return what it printed on stderr (the LLM fake's closing counts)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.summary = err.decode(errors="replace")
        return self.summary


@pytest.fixture
def fakes() -> Iterator[Callable[..., list[Fake]]]:
    """Factory: ``fakes(("llm_server", args...), ...)`` starts them all at once."""
    started: list[Fake] = []

    def start(*specs: Sequence[str]) -> list[Fake]:
        new = [Fake(spec[0], *spec[1:]) for spec in specs]
        started.extend(new)
        for fake in new:
            fake.ready()
        return new

    yield start
    for fake in started:
        fake.stop()


def llm_args(*extra: str) -> tuple[str, ...]:
    return ("llm_server", "--api-key", FAKE_KEY, "--model", "fake-model", "--latency", "0.01-0.05", *extra)


def hxd_args(low: float, high: float) -> tuple[str, ...]:
    return ("huixiangdou_server", "--latency", str(low), str(high))


def llm_served(fake: Fake) -> int:
    """Chat calls the LLM fake answered, from the counts it prints when stopped."""
    summary = fake.stop()
    line = next((ln for ln in summary.splitlines() if ln.startswith("{")), None)
    assert line is not None, summary
    served: int = json.loads(line)["served"]
    return served


def asked(hxd: Sequence[Fake]) -> Counter[str]:
    """Requests per question text over every HuixiangDou fake."""
    total: Counter[str] = Counter()
    for fake in hxd:
        total.update(fake.stats()["counts"])
    return total


def hxd_in_flight(hxd: Sequence[Fake]) -> int:
    return sum(int(fake.stats()["in_flight"]) for fake in hxd)


# ---- settings, runs and ledgers --------------------------------------------------------


def write_settings(path: Path, llm_url: str, hxd_urls: Sequence[str], **sections: dict[str, Any]) -> Path:
    """A settings file with data and output under ``path``'s folder; sections override."""
    data: dict[str, dict[str, Any]] = {
        "paths": {"data_dir": str(path.parent / "data"), "out_dir": str(path.parent / "out")},
        "llm": {"base_url": llm_url, "model": "fake-model", "api_key_env": FAKE_KEY_ENV,
                "timeout_s": 10, "max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
                "rpm": 100_000, "tpm": 100_000_000},
        "huixiangdou": {"urls": list(hxd_urls), "timeout_s": 10, "backoff_base_s": 0.01},
        "questions": {"aspects": ASPECTS[:3], "per_aspect": 4, "batch_size": 3},
        "conversations": {"system_prompt": SYSTEM},
        "run": {"grace_s": 10, "progress_interval_s": 60},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    # JSON scalars and string lists are valid TOML values.
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in values.items())
        for name, values in data.items()
    )
    path.write_text(text, encoding="utf-8")
    return path


class QARun:
    """``python run.py --settings S qa`` (or another ``command``) with its output captured to files."""

    def __init__(self, settings: Path, name: str, command: Sequence[str] = ("qa",)) -> None:
        self.out_path = settings.parent / f"{name}.stdout"
        self.err_path = settings.parent / f"{name}.stderr"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "run.py", "--settings", str(settings), *command],
                cwd=REPO, env=_env(), stdout=out, stderr=err,
            )

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"run did not exit within {timeout:.0f} s; stderr:\n{self.stderr[-3000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.wait() == -signal.SIGKILL


def run_to_end(settings: Path, name: str) -> QARun:
    run = QARun(settings, name)
    run.wait()
    return run


def state(settings: Path, name: str) -> Path:
    return settings.parent / "out" / "state" / f"{name}.jsonl"


def dataset(settings: Path) -> Path:
    return settings.parent / "out" / "conversations.jsonl"


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def complete_rows(path: Path) -> list[dict[str, Any]]:
    """The newline-terminated rows of a ledger a killed writer may have left a torn tail on."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def strict_rows(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file; fails on a torn or unparseable line."""
    data = path.read_bytes()
    if not data:
        return []
    assert data.endswith(b"\n"), f"{path.name} does not end with a newline"
    rows = []
    for n, line in enumerate(data.splitlines(), 1):
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"{path.name} line {n} is not JSON: {line[:80]!r}")
        assert isinstance(row, dict), f"{path.name} line {n} is not an object"
        rows.append(row)
    return rows


def check_dataset(settings: Path) -> list[dict[str, Any]]:
    """conversations.jsonl is whole and valid XTuner conversation data; its records."""
    path = dataset(settings)
    if not path.exists():  # no run has ended yet
        return []
    records = strict_rows(path)
    if records:
        report = validate_file(path)
        assert report.errors == [] and report.kind == "conversation", report.errors
        assert all(r["conversation"][0]["system"] == SYSTEM for r in records)
    return records


def answered_questions(settings: Path) -> Counter[str]:
    return Counter(r["question"] for r in strict_rows(state(settings, "answers")) if r["kind"] == "answered")


def run_ends(settings: Path) -> list[dict[str, Any]]:
    return [e for e in strict_rows(state(settings, "events")) if e.get("event") == "run_end"]


# ---- 1. SIGKILL at random points, then resume -------------------------------------------

KILLS = 4
SLOTS = 2  # two HuixiangDou fakes, one request in flight each


def test_sigkill_at_random_points_loses_only_what_was_in_flight(
    tmp_path: Path, fakes: Callable[..., list[Fake]]
) -> None:
    rng = random.Random(20240820)
    llm, *hxd = fakes(llm_args(), hxd_args(0.01, 0.05), hxd_args(0.01, 0.05))
    per_aspect, n_aspects = 8, 5
    settings = write_settings(
        tmp_path / "settings.toml", llm.url, [h.url for h in hxd],
        questions={"aspects": ASPECTS[:n_aspects], "per_aspect": per_aspect, "batch_size": 4},
        run={"fsync": "never"},
    )
    total = per_aspect * n_aspects
    questions, answers = state(settings, "questions"), state(settings, "answers")
    lost = 0  # requests HuixiangDou received whose outcome no ledger holds

    for round_no in range(KILLS):
        run = QARun(settings, f"killed{round_no}")
        if round_no == 0:
            # While questions are still being written (answers already flow too).
            ledger, target = questions, rng.randint(1, 2 * 4)
        else:
            ledger, target = answers, lines(answers) + rng.randint(1, 8)
        wait_until(lambda: lines(ledger) >= target, f"{ledger.name} to reach {target} lines", proc=run.proc)
        run.kill()

        # The killed client's requests finish on the servers; then count.
        wait_until(lambda: hxd_in_flight(hxd) == 0, "the servers to finish the killed run's requests")
        sent = asked(hxd)
        recorded = Counter(r["question"] for r in complete_rows(answers))
        unrecorded = sum((sent - recorded).values())
        assert unrecorded - lost <= SLOTS, (
            f"kill {round_no}: {unrecorded - lost} requests unrecorded, more than the {SLOTS} in flight"
        )
        lost = unrecorded
        # The dataset is replaced atomically, so a kill never leaves half of one.
        check_dataset(settings)

    final = run_to_end(settings, "final")
    assert final.proc.returncode == 0, final.stderr[-3000:]

    # No torn line anywhere: every ledger line parses and every file ends whole.
    first_turns = strict_rows(questions)
    answer_rows = strict_rows(answers)
    strict_rows(state(settings, "events"))
    texts = [q["text"] for q in sorted(first_turns, key=lambda q: q["seq"])]
    assert len(texts) == len(set(texts)) == total
    assert len({q["id"] for q in first_turns}) == total

    # Every first-turn question answered exactly once, in the ledger and the dataset.
    assert answered_questions(settings) == Counter(texts)
    records = check_dataset(settings)
    assert [r["conversation"][0]["input"] for r in records] == texts

    # Nothing re-sent beyond what was in flight at the kills.
    sent = asked(hxd)
    assert set(sent) == set(texts)
    resent = sum(n - 1 for n in sent.values())
    assert resent == lost, "every repeat request is one whose outcome a kill lost"
    assert len(answer_rows) == sum(sent.values()) - lost
    assert lost <= SLOTS * KILLS


# ---- 2 and 4. Ctrl-C and SIGTERM --------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_finishes_in_flight_requests_and_exits_130(
    tmp_path: Path, fakes: Callable[..., list[Fake]], sig: signal.Signals
) -> None:
    llm, hxd = fakes(llm_args(), hxd_args(0.15, 0.2))
    settings = write_settings(tmp_path / "settings.toml", llm.url, [hxd.url])
    run = QARun(settings, "run")
    answers = state(settings, "answers")
    wait_until(lambda: lines(answers) >= 2 and hxd_in_flight([hxd]) >= 1,
               "two answers recorded and a third in flight", proc=run.proc)

    run.signal(sig)

    assert run.wait() == 130, run.stderr[-3000:]
    assert f"stopped by {sig.name}" in run.stdout and resume_hint(settings) in run.stdout
    sent = asked([hxd])
    rows = strict_rows(answers)
    assert [r["kind"] for r in rows] == ["answered"] * len(rows)
    assert Counter(r["question"] for r in rows) == sent, "every request sent was finished and recorded"
    assert 3 <= len(rows) < 12, "it stopped early, after the request in flight"
    records = check_dataset(settings)
    assert sorted(r["conversation"][0]["input"] for r in records) == sorted(sent)
    end = run_ends(settings)
    assert len(end) == 1 and end[0]["status"] == "interrupted"
    assert end[0]["detail"] == f"stopped by {sig.name}"


def test_a_second_ctrl_c_cancels_at_once_and_keeps_what_was_recorded(
    tmp_path: Path, fakes: Callable[..., list[Fake]]
) -> None:
    # One fast server answers while the slow one holds a request far longer
    # than any wait here, so the first Ctrl-C leaves the run in its grace period.
    llm, fast, slow = fakes(llm_args(), hxd_args(0.02, 0.05), hxd_args(120, 120))
    settings = write_settings(
        tmp_path / "settings.toml", llm.url, [fast.url, slow.url],
        huixiangdou={"timeout_s": 600}, run={"grace_s": 600},
    )
    answers = state(settings, "answers")
    run = QARun(settings, "run")
    wait_until(lambda: lines(answers) >= 3 and hxd_in_flight([slow]) == 1,
               "answers recorded while the slow server holds one", proc=run.proc)

    run.signal(signal.SIGINT)
    wait_until(lambda: "finishing what is in flight" in run.stderr, "the first SIGINT to be handled",
               proc=run.proc)
    # The fast server's last request is finished and recorded in the grace period.
    wait_until(lambda: hxd_in_flight([fast]) == 0 and lines(answers) == sum(asked([fast]).values()),
               "the fast server's requests to be recorded", proc=run.proc)
    recorded = answers.read_bytes()
    run.signal(signal.SIGINT)

    assert run.wait() == 130, run.stderr[-3000:]
    assert answers.read_bytes() == recorded, "recorded answers stay, nothing half-written follows"
    held = set(asked([slow]))
    assert len(held) == 1 and not held & set(answered_questions(settings)), "the cancelled request is not recorded"
    records = check_dataset(settings)
    assert len(records) == lines(answers)
    end = run_ends(settings)
    assert len(end) == 1 and end[0]["status"] == "interrupted"
    assert "second signal" in end[0]["detail"]

    # A resume on the fast server alone asks only what was never answered.
    before = asked([fast])
    write_settings(settings, llm.url, [fast.url])
    resumed = run_to_end(settings, "resume")
    assert resumed.proc.returncode == 0, resumed.stderr[-3000:]
    after = asked([fast])
    assert all(after[q] == 1 for q in before), "an answered question was sent again"
    assert set(answered_questions(settings).values()) == {1}
    assert len(check_dataset(settings)) == 12


# ---- 3. quota mid-run, then a resume on a fresh LLM ----------------------------------------


def test_quota_exits_75_says_how_to_resume_and_the_resume_redoes_nothing(
    tmp_path: Path, fakes: Callable[..., list[Fake]]
) -> None:
    quota_after = 3  # each aspect's first question batch, then nothing
    llm, hxd = fakes(llm_args("--quota-after", str(quota_after), "--quota-style", "deepseek"),
                     hxd_args(0.01, 0.03))
    settings = write_settings(tmp_path / "settings.toml", llm.url, [hxd.url])

    stopped = run_to_end(settings, "quota")

    assert stopped.proc.returncode == 75, stopped.stderr[-3000:]
    assert stopped.stdout.startswith("qa quota") and resume_hint(settings) in stopped.stdout
    assert "Insufficient Balance" in stopped.stdout, "the message says what the API said"
    questions_before = state(settings, "questions").read_bytes()
    n_before = len(strict_rows(state(settings, "questions")))
    assert 0 < n_before < 12
    assert len(check_dataset(settings)) == sum(answered_questions(settings).values())
    assert run_ends(settings)[-1]["status"] == "quota"
    # Calls already inside the fake when its quota ran out are still served.
    served_before = llm_served(llm)
    assert served_before >= quota_after

    # A fresh LLM without quota at a new URL; it must not repeat the old fake's questions.
    (fresh,) = fakes(llm_args("--first-question", "1000"))
    write_settings(settings, fresh.url, [hxd.url])
    resumed = run_to_end(settings, "resume")

    assert resumed.proc.returncode == 0, resumed.stderr[-3000:]
    assert "qa complete" in resumed.stdout and "again to resume" not in resumed.stdout
    assert state(settings, "questions").read_bytes().startswith(questions_before)
    texts = [q["text"] for q in strict_rows(state(settings, "questions"))]
    assert len(texts) == len(set(texts)) == 12
    assert set(asked([hxd]).values()) == {1}, "no question was sent to HuixiangDou twice"
    assert answered_questions(settings) == Counter(texts)
    assert len(check_dataset(settings)) == 12
    # Two batches per aspect (4 questions, 3 per batch) in all: none paid for twice.
    assert served_before + llm_served(fresh) == 3 * 2


def test_the_whole_job_writes_the_pretraining_file_then_the_conversations(
    tmp_path: Path, fakes: Callable[..., list[Fake]]
) -> None:
    # `python run.py` with no command: the pretraining stage, then qa without qa's own flags.
    llm, hxd = fakes(llm_args(), hxd_args(0.0, 0.01))
    settings = write_settings(tmp_path / "settings.toml", llm.url, [hxd.url])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.md").write_text("天命人从花果山出发。\n\n他要找回六根。\n", encoding="utf-8")

    run = QARun(settings, "all", command=())

    assert run.wait() == 0, run.stderr[-3000:]
    assert run.stdout.startswith("pretrain: 1 files read")
    assert "qa complete" in run.stdout
    assert len(check_dataset(settings)) == 12
