"""Shared plumbing of the QA benchmarks: the fakes in their own process, the
pipeline (or the bare loop) in another, settings for both, and their figures.

Three processes, so each one's CPU is its own: the benchmark (this module),
``bench.fake_services`` and ``bench.qa_proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

__all__ = ["REPO", "Services", "aspects", "qa_settings", "run_qa_proc", "services", "start_qa_proc"]

KEY_ENV = "BENCH_LLM_KEY"


@dataclass
class Services:
    llm: str
    hxd: list[str]
    proc: subprocess.Popen[str]
    report: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def services(
    *, llm_latency: tuple[float, ...] = (0.0,), rpm_limit: int | None = None, hxd: int = 4,
    hxd_latency: tuple[float, ...] = (0.0,),
) -> Iterator[Services]:
    """Start ``bench.fake_services``; on exit stop it and fill ``report`` with its counters."""
    cmd = [PYTHON, "-m", "bench.fake_services", "--hxd", str(hxd),
           "--llm-latency", *map(str, llm_latency), "--hxd-latency", *map(str, hxd_latency)]
    if rpm_limit:
        cmd += ["--rpm-limit", str(rpm_limit)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    svc = Services(first["llm"], first["hxd"], proc)
    try:
        yield svc
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        with contextlib.suppress(ValueError):
            svc.report = json.loads(out.strip().splitlines()[-1])


def aspects(n: int) -> list[str]:
    return [f"方面{i:02d}" for i in range(n)]


def qa_settings(
    out_dir: Path, svc: Services, *, questions: int, n_aspects: int, batch_size: int = 10,
    rpm: int = 1_000_000, llm_concurrency: int = 8, hxd_concurrency: int = 1,
    queue_size: int = 256,
) -> dict[str, Any]:
    """The settings table of a benchmark run (first-turn questions only)."""
    per_aspect = max(1, questions // n_aspects)
    return {
        "paths": {"data_dir": str(out_dir / "data"), "out_dir": str(out_dir)},
        "llm": {"base_url": svc.llm, "model": "bench-model", "api_key_env": KEY_ENV,
                "rpm": rpm, "tpm": 1_000_000_000, "concurrency": llm_concurrency,
                "timeout_s": 60, "max_retries": 6, "backoff_base_s": 0.5, "backoff_max_s": 30},
        "huixiangdou": {"urls": svc.hxd, "concurrency_per_server": hxd_concurrency,
                        "timeout_s": 60, "backoff_base_s": 0.2},
        "questions": {"aspects": aspects(n_aspects), "per_aspect": per_aspect,
                      "batch_size": batch_size, "max_chars": 60},
        "conversations": {"min_turns": 1, "max_turns": 1},
        "run": {"grace_s": 30, "progress_interval_s": 3600, "queue_size": queue_size},
    }


def start_qa_proc(settings: dict[str, Any], mode: str = "pipeline", *,
                  profile: Path | None = None) -> subprocess.Popen[str]:
    """Start ``bench.qa_proc`` on ``settings``; its last stdout line is its figures."""
    out_dir = Path(settings["paths"]["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = out_dir.parent / f"{out_dir.name}-{mode}.json"
    cfg.write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
    cmd = [PYTHON, "-m", "bench.qa_proc", str(cfg), "--mode", mode]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    env = {**os.environ, KEY_ENV: "sk-bench-0123456789"}
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)


def run_qa_proc(settings: dict[str, Any], mode: str = "pipeline", *,
                profile: Path | None = None) -> dict[str, Any]:
    """Run ``bench.qa_proc`` to the end; its figures, plus ``spawned`` (Unix time)."""
    spawned = time.time()
    proc = start_qa_proc(settings, mode, profile=profile)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"bench.qa_proc ({mode}) failed with {proc.returncode}")
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    figures["spawned"] = spawned
    return figures
