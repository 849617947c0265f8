"""SIGKILL a real process appending through LedgerWriter; the ledger must survive.

Each round starts a child that resumes the ledger (read_ledger repairs any torn
tail), appends numbered rows and prints each number once ``record`` says it is
durable. The parent kills it with SIGKILL after a seeded random number of
acknowledgements, while it is still writing. Afterwards every line parses, the
file ends with a newline, the numbers run 0..n-1 with no gap or repeat, and
every acknowledged number is in the file.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipeline.store.ledger import read_ledger, repair_tail

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import asyncio, sys
from pipeline.store.ledger import LedgerWriter, read_ledger

async def main(path, policy, pad, limit):
    rows = read_ledger(path)
    start = rows[-1]["seq"] + 1 if rows else 0
    writer = LedgerWriter({"a": path}, policy)
    run = asyncio.create_task(writer.run())
    filler = "x" * pad
    out = sys.stdout.buffer
    for seq in range(start, start + limit, 2):
        # two rows in flight at once, so batches form and a kill can split one
        pair = [writer.record("a", {"seq": seq + i, "pad": filler}) for i in (0, 1)]
        for i, pending in enumerate(pair):
            await pending
            out.write(b"%d\\n" % (seq + i))
            out.flush()
    writer.close()
    await run

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""

ROUNDS = 4
LIMIT = 50_000  # bounds each child; the kill always comes long before


def _round(path: Path, policy: str, pad: int, kill_after: int) -> set[int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), policy, str(pad), str(LIMIT)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acked: set[int] = set()
    try:
        assert proc.stdout is not None
        while len(acked) < kill_after:
            line = proc.stdout.readline()
            if not line:
                _, err = proc.communicate()
                pytest.fail(f"child exited early ({proc.returncode}): {err.decode(errors='replace')}")
            acked.add(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    return acked


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "pad", "seed"),
    [
        ("never", 10, 1),
        ("batch", 10, 2),
        # Rows of 300 kB take many page copies per write, so a SIGKILL can
        # land inside one and leave a genuinely torn line.
        ("never", 300_000, 3),
    ],
)
def test_sigkill_mid_append_leaves_a_ledger_that_resumes_cleanly(
    tmp_path: Path, policy: str, pad: int, seed: int
) -> None:
    rng = random.Random(seed)
    path = tmp_path / "state" / "answers.jsonl"
    acked: set[int] = set()
    for _ in range(ROUNDS):
        acked |= _round(path, policy, pad, kill_after=rng.randint(1, 40 if pad > 1000 else 400))

    repair_tail(path)
    data = path.read_bytes()
    assert data.endswith(b"\n")
    seqs = [orjson.loads(line)["seq"] for line in data.splitlines()]
    assert seqs == list(range(len(seqs))), "rows lost, repeated or out of order"
    assert acked <= set(seqs), "a row reported as recorded is missing"
    assert [row["seq"] for row in read_ledger(path)] == seqs
