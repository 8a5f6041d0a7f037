"""Every shell block of docs/runbook.md runs as written, against a live runtime."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from surelay import (
    BreakerPolicy,
    Envelope,
    InvalidMessage,
    Outcome,
    PermanentError,
    RetryPolicy,
    TransientError,
)
from tests.helpers import Recorder, open_runtime

RUNBOOK = Path(__file__).parent.parent / "docs" / "runbook.md"
BLOCKS = re.findall(r"```sh\n(.*?)```", RUNBOOK.read_text(), flags=re.DOTALL)


def test_the_runbook_has_commands_for_every_section() -> None:
    joined = "\n".join(BLOCKS)
    for command in ("stats", "dlq list", "dlq get", "dlq replay", "dlq archive", "dlq purge"):
        assert f"surelay {command}" in joined


def test_every_runbook_block_runs_as_written(tmp_path: Path) -> None:
    healthy = threading.Event()

    def downstream(envelope: Envelope) -> None:
        if healthy.is_set():
            return
        kind = envelope.payload.split(b"-")[0]
        if kind == b"timeout":
            raise TransientError("504 from the gateway")
        if kind == b"invalid":
            raise InvalidMessage("payload is not JSON")
        raise PermanentError("404 no such user")

    sink = Recorder(downstream)
    transports = {"webhook": sink, "sms": sink}
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    config = {
        "retry": RetryPolicy(max_attempts=1),
        "breaker": BreakerPolicy(window=1000, min_calls=1000),
    }
    with open_runtime(tmp_path / "surelay-data", transports, **config) as rt:  # type: ignore[arg-type]
        receipts = [rt.send("webhook", f"timeout-{i}".encode(), key=f"u{i % 3}") for i in range(15)]
        receipts += [rt.send("sms", f"invalid-{i}".encode()) for i in range(2)]
        receipts += [rt.send("sms", b"gone-1")]
        assert all(r.wait(10) is Outcome.DEAD_LETTERED for r in receipts)
        healthy.set()
        deadline = time.monotonic() + 10
        while not _published(rt):
            assert time.monotonic() < deadline, "the runtime never published its status"
            threading.Event().wait(0.05)
        for block in BLOCKS:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, f"{block}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        stats = rt.stats()
        dead = {d.reason_class for d in rt.dead_letters.list()}
        archived = rt.dead_letters.list(status="archived")
    assert stats.replayed == 15  # every exhausted one, canary first
    assert dead == {"permanent"}  # left for a person to decide
    assert [d.reason_class for d in archived] == ["invalid", "invalid"]


def _published(rt: object) -> bool:
    store = rt._store  # type: ignore[attr-defined]
    with store.read() as txn:
        return store.status.get(txn) is not None


@pytest.mark.parametrize("block", BLOCKS)
def test_blocks_use_the_default_path(block: str) -> None:
    assert "--path" not in block  # so they run as written from the data directory's parent
