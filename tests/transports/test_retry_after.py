"""`Retry-After`: any value a server sends is parsed safely, and the wait it asks for is
honoured only up to `RetryPolicy.max_retry_after`, end to end through a runtime."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay import Outcome, RetryPolicy, Runtime
from surelay.storage.records import OutboxEntry
from surelay.transports import HttpTransport
from surelay.transports._http_common import RETRY_AFTER_CEILING, parse_retry_after
from tests.helpers import Clock, open_runtime

from .http_server import HttpServer, Reply, Request

HUGE = "1" + "0" * 5000
YEAR_9999 = "Fri, 31 Dec 9999 23:59:59 GMT"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1000000", 1e6),
        ("100000000000000", RETRY_AFTER_CEILING),
        (HUGE, RETRY_AFTER_CEILING),
        ("000000000000000000000000000000007", 7.0),
        (YEAR_9999, RETRY_AFTER_CEILING),
        ("1e300", None),
        ("inf", None),
        ("NaN", None),
        ("-3", None),
        ("+3", None),
        ("٣", None),  # a digit, but not an ASCII one
        ("soon", None),
        ("", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: wait 0
        ("Wed, 21 Oct 2015 07:28:10 -0000", 20.0),  # no zone: GMT, as HTTP dates are
        ("Wed, 21 Oct 99999 07:28:00 GMT", None),
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1445412470.0) == expected


@given(st.text(max_size=60) | st.from_regex(r"\s*[0-9]{1,400}\s*", fullmatch=True))
def test_any_value_parses_to_none_or_a_bounded_wait(value: str) -> None:
    wait = parse_retry_after(value)
    assert wait is None or (math.isfinite(wait) and 0.0 <= wait <= RETRY_AFTER_CEILING)


def retry_of(rt: Runtime, message_id: str) -> OutboxEntry | None:
    """The message's outbox entry once its retry is persisted (attempt 2), else None."""
    with rt._store.read() as txn:
        entry = rt._store.outbox.get(txn, message_id)
    return entry if entry is not None and entry.envelope.attempt == 2 else None


@pytest.mark.parametrize(
    ("value", "delay"),
    [
        ("1000000", 3600.0),
        ("100000000000000", 3600.0),
        (HUGE, 3600.0),
        (YEAR_9999, 3600.0),
        ("1e300", 10.0),  # unreadable: the policy's delay
        ("inf", 10.0),
        ("-5", 10.0),
        ("garbage", 10.0),
        ("30", 30.0),
    ],
    ids=["1e6", "1e14", "huge", "year-9999", "1e300", "inf", "negative", "garbage", "30"],
)
def test_a_503_retry_after_is_capped_persisted_and_the_key_goes_on(
    tmp_path: Path, value: str, delay: float
) -> None:
    """The first POST is answered 503 with `Retry-After: value`; the retry is persisted
    at most `max_retry_after` ahead, comes once the clock gets there, and the key's next
    message follows."""
    clock = Clock()
    answered: list[str] = []

    def script(request: Request) -> Reply:
        answered.append(request.body.decode())
        return Reply(503, retry_after=value) if len(answered) == 1 else Reply(200)

    policy = RetryPolicy(base_delay=10, max_delay=10, jitter="none")  # max_retry_after 3600
    with (
        HttpServer(script) as server,
        open_runtime(
            tmp_path, {"hook": HttpTransport(server.url + "/")}, clock=clock, retry=policy
        ) as rt,
    ):
        first = rt.send("hook", b"first", key="k")
        second = rt.send("hook", b"second", key="k")
        deadline = time.monotonic() + 10
        while (entry := retry_of(rt, first.message_id)) is None:
            assert time.monotonic() < deadline, "the retry was never persisted"
            threading.Event().wait(0.002)
        assert entry.due_at == clock() + delay
        assert second.wait(0) is None  # behind the first, in its key's order
        clock.advance(delay)
        assert first.wait(10) is Outcome.DELIVERED
        assert second.wait(10) is Outcome.DELIVERED
    assert answered == ["first", "first", "second"]
