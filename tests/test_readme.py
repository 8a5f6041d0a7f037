"""Every Python example in the README runs as written, and again in the same directory (as
a reader trying it twice does: its data directories, outbox and dedup records are still
there, and so is the JetStream stream)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nats_server import NatsServer

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if "NATS_URL" in code:  # the JetStream example gets a real server of its own
            server = stack.enter_context(NatsServer(tmp_path / "nats"))
            env["NATS_URL"] = server.url
        if "RABBITMQ_URL" in code:  # and the RabbitMQ one a broker node of its own
            env["RABBITMQ_URL"] = request.getfixturevalue("rabbitmq").url
        for run in ("first", "second"):
            done = subprocess.run(
                [sys.executable, "-c", code],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=env,
            )
            assert done.returncode == 0, f"the {run} run failed:\n{done.stderr}"
