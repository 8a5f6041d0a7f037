"""`Receipt.wait` takes seconds >= 0 or None, and says so for anything else."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from surelay import Outcome
from tests.helpers import Gate, Recorder, open_runtime


@pytest.mark.parametrize("timeout", [math.nan, -1, -0.001, "1", True])
def test_wait_refuses_a_timeout_that_is_not_seconds(tmp_path: Path, timeout: object) -> None:
    gate = Gate()
    with open_runtime(tmp_path, {"t": Recorder(gate)}) as rt:
        receipt = rt.send("t", b"x")
        with pytest.raises(ValueError, match="timeout must be seconds >= 0 or None"):
            receipt.wait(timeout)  # type: ignore[arg-type]
        gate.open()
        assert receipt.wait(math.inf) is Outcome.DELIVERED  # inf: no limit, as None
        with pytest.raises(ValueError, match=r"got nan"):
            receipt.wait(math.nan)  # once ended too: the argument is wrong either way
