"""`resolve`: a transport's optional members read and checked once, when it is added."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from surelay import Runtime, RuntimeConfig
from surelay.delivery.spec import resolve
from surelay.envelope import Envelope
from surelay.transports import HttpTransport, Transport


class Full:
    """A transport with every optional member of the protocol."""

    ack_timeout = 2.5

    def __init__(self) -> None:
        self.prepared: list[int] = []

    async def __call__(self, envelope: Envelope) -> None: ...

    def prepare(self, concurrency: int) -> None:
        self.prepared.append(concurrency)

    async def aclose(self) -> None: ...

    def classify(self, error: BaseException) -> str | None:
        return "permanent" if isinstance(error, KeyError) else None


def test_a_plain_function_gets_the_config_defaults() -> None:
    def send(envelope: Envelope) -> None: ...

    spec = resolve("hooks", send, RuntimeConfig(ack_timeout=7.0, concurrency=3))
    assert (spec.name, spec.call, spec.coroutine) == ("hooks", send, False)
    assert (spec.ack_timeout, spec.concurrency) == (7.0, 3)
    assert spec.classify is spec.prepare is spec.aclose is None


def test_every_optional_member_is_taken() -> None:
    transport = Full()
    spec = resolve("full", transport, RuntimeConfig(concurrency_per_transport={"full": 9}))
    assert spec.coroutine and spec.ack_timeout == 2.5 and spec.concurrency == 9
    assert spec.classify is not None and spec.classify(KeyError()) == "permanent"
    assert spec.prepare is not None and spec.aclose is not None
    assert isinstance(transport, Transport)


def test_the_config_per_transport_wins_over_the_transports_own_ack_timeout() -> None:
    config = RuntimeConfig(ack_timeout_per_transport={"full": 0.5})
    assert resolve("full", Full(), config).ack_timeout == 0.5


def test_a_sync_transports_aclose_is_not_awaited() -> None:
    class Sync:
        def __call__(self, envelope: Envelope) -> None: ...

        async def aclose(self) -> None: ...

    assert resolve("s", Sync(), RuntimeConfig()).aclose is None


@pytest.mark.parametrize(
    ("member", "value", "error", "words"),
    [
        ("ack_timeout", "5", TypeError, "ack_timeout must be a number of seconds, got '5'"),
        ("ack_timeout", True, TypeError, "ack_timeout must be a number of seconds, got True"),
        ("ack_timeout", 0, ValueError, "ack_timeout must be positive, got 0"),
        ("ack_timeout", float("nan"), ValueError, "ack_timeout must be positive, got nan"),
        ("classify", "permanent", TypeError, "classify must be a method, got str"),
        ("prepare", 8, TypeError, "prepare must be a method, got int"),
        ("aclose", object(), TypeError, "aclose must be a method, got object"),
    ],
)
def test_a_member_of_the_wrong_kind_is_refused_naming_it(
    member: str, value: Any, error: type[Exception], words: str
) -> None:
    class Odd:
        async def __call__(self, envelope: Envelope) -> None: ...

    odd = Odd()
    setattr(odd, member, value)
    with pytest.raises(error) as raised:
        resolve("odd", odd, RuntimeConfig())
    assert str(raised.value) == f"transport 'odd': {words}"


def test_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="transport 'x' must be callable with an envelope, got str"):
        resolve("x", "https://example.com", RuntimeConfig())


def test_runtime_open_refuses_a_bad_transport_and_starts_nothing(tmp_path: Path) -> None:
    good = Full()

    class Bad:
        ack_timeout = -1

        def __call__(self, envelope: Envelope) -> None: ...

    with pytest.raises(ValueError, match="transport 'bad': ack_timeout must be positive"):
        Runtime.open(tmp_path / "d", transports={"good": good, "bad": Bad()})
    assert good.prepared == []  # checked before any transport is prepared
    with Runtime.open(tmp_path / "d", transports={"good": good}) as rt:
        assert rt.health()["ok"]
    assert good.prepared == [RuntimeConfig().concurrency_for("good")]


def test_the_built_in_transports_satisfy_the_protocol() -> None:
    http = HttpTransport("http://127.0.0.1:9/in")
    assert isinstance(http, Transport)
    spec = resolve("http", http, RuntimeConfig())
    assert not spec.coroutine and spec.ack_timeout == RuntimeConfig().ack_timeout
