"""Classification of transport errors."""

from __future__ import annotations

import pytest

from surelay import InvalidMessage, PermanentError, TransientError
from surelay.policy.verdict import classify


class WithClassifier:
    def __init__(self, verdict: object) -> None:
        self.verdict = verdict

    def __call__(self) -> None: ...

    def classify(self, error: BaseException) -> object:
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict


@pytest.mark.parametrize(
    ("error", "transport", "verdict"),
    [
        (PermanentError("400"), None, "permanent"),
        (TransientError("503"), WithClassifier("permanent"), "transient"),  # explicit wins
        (InvalidMessage("not JSON"), None, "invalid"),
        (ValueError("x"), None, "transient"),  # unknown failures are retried
        (ValueError("x"), WithClassifier("permanent"), "permanent"),
        (ValueError("x"), WithClassifier("invalid"), "invalid"),
        (ValueError("x"), WithClassifier("maybe"), "transient"),  # a bad answer is logged
        (ValueError("x"), WithClassifier(RuntimeError("bug")), "transient"),
    ],
)
def test_classify(error: BaseException, transport: object, verdict: str) -> None:
    assert classify(error, transport) == verdict
