"""What a send's arguments must be: each checked alone (`check_one`), a batch's as a
whole (`check_batch`), and the envelopes made of them. Pure functions: they raise
`UnknownTransport` or `InvalidMessage` naming the problem, and touch nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from surelay.config import RuntimeConfig
from surelay.envelope import SEND_ARGS as ENVELOPE_SEND_ARGS
from surelay.envelope import Envelope, Priority, check_send, check_timing, checked_envelope
from surelay.errors import InvalidMessage, UnknownTransport
from surelay.storage.environment import Txn
from surelay.telemetry import TRACEPARENT, traceparent_of

if TYPE_CHECKING:
    from surelay.transports.protocol import Transport

__all__ = [
    "Checked",
    "check_batch",
    "check_one",
    "check_per_transport",
    "check_timeout",
    "check_transports",
    "envelopes",
]

SEND_ARGS = ENVELOPE_SEND_ARGS | {"txn"}
"""`rt.send`'s arguments by name: a send's, and the host transaction."""

Checked = tuple[
    str,
    bytes,
    str | None,
    str | None,
    Priority,
    MappingProxyType[str, str],
    float | None,
    str | None,
]
"""send()'s arguments, checked: transport, payload, key, idempotency key, priority,
headers, due time (epoch seconds; None: due now) and message type."""


def check_one(  # noqa: PLR0917  # send()'s arguments, checked in one place
    transports: Mapping[str, object],
    config: RuntimeConfig,
    transport: object,
    payload: object,
    key: object,
    idempotency_key: object,
    priority: object,
    headers: object,
    delay: object = None,
    not_before: object = None,
    type_: object = None,
) -> Checked:
    """One send's arguments, for a runtime with `transports` and `config`."""
    if not isinstance(transport, str) or transport not in transports:
        known = ", ".join(sorted(transports)) or "none"
        raise UnknownTransport(f"unknown transport {transport!r}; this runtime has: {known}")
    sent = check_send(
        transport,
        payload,
        key,
        idempotency_key,
        priority,
        headers,
        max_payload_bytes=config.max_payload_bytes,
    )
    if delay is None and not_before is None and type_ is None:
        return (*sent, None, None)
    now = config.clock()
    due, kind = check_timing(delay, not_before, type_, now=now)
    ttl = config.message_ttl
    if due is not None and ttl is not None and due - now >= ttl:
        raise InvalidMessage(
            f"the message is due in {due - now:.3f}s, past message_ttl={ttl}s: it would "
            "expire before its first attempt"
        )
    return (*sent, due, kind)


def check_batch(
    transports: Mapping[str, object], config: RuntimeConfig, messages: object
) -> tuple[list[Checked], Txn | None]:
    """A batch's messages checked, and their common transaction (see `send_batch`):
    at most `config.max_batch` of them, each a mapping of `send()`'s arguments; an
    error names the index of the first bad one."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidMessage(
            f"messages must be a sequence of mappings, got {type(messages).__name__}"
        )
    if len(messages) > config.max_batch:
        raise InvalidMessage(
            f"batch of {len(messages)} messages is over max_batch={config.max_batch}"
        )
    checked = []
    txn: Txn | None = None
    for index, message in enumerate(messages):
        try:
            arguments, message_txn = _from_mapping(transports, config, message)
        except UnknownTransport as error:
            raise UnknownTransport(f"messages[{index}]: {error.args[0]}") from None
        except InvalidMessage as error:
            raise InvalidMessage(f"messages[{index}]: {error}") from None
        if index and message_txn is not txn:
            raise InvalidMessage(f"messages[{index}]: every message of a batch needs the same txn")
        txn = message_txn
        checked.append(arguments)
    return checked, txn


def _from_mapping(
    transports: Mapping[str, object], config: RuntimeConfig, message: object
) -> tuple[Checked, Txn | None]:
    if not isinstance(message, Mapping):
        raise InvalidMessage(
            f"expected a mapping of send() arguments, got {type(message).__name__}"
        )
    if not SEND_ARGS.issuperset(message):
        unknown = set(message) - SEND_ARGS
        raise InvalidMessage(f"unknown send() argument(s) {sorted(map(str, unknown))}")
    for required in ("transport", "payload"):
        if required not in message:
            raise InvalidMessage(f"missing {required!r}")
    checked = check_one(
        transports,
        config,
        message["transport"],
        message["payload"],
        message.get("key"),
        message.get("idempotency_key"),
        message.get("priority", Priority.NORMAL),
        message.get("headers"),
        message.get("delay"),
        message.get("not_before"),
        message.get("type"),
    )
    return checked, message.get("txn")


def envelopes(
    checked: list[Checked], ids: list[str], now: float, spans: list[Any] | None
) -> list[Envelope]:
    """Envelopes for checked arguments, with `spans` (one per message) each carrying
    its send span's `traceparent` (built once: a copy per message would cost more)."""
    if spans is None:
        return [
            checked_envelope(
                m, transport, data, key, idempotency or m, priority, headers, 1, now, kind
            )
            for m, (transport, data, key, idempotency, priority, headers, _, kind) in zip(
                ids, checked, strict=True
            )
        ]
    made = []
    for m, span, (transport, data, key, idempotency, priority, given, _, kind) in zip(
        ids, spans, checked, strict=True
    ):
        traceparent = None if span is None else traceparent_of(span)
        headers = (
            given if traceparent is None else MappingProxyType({**given, TRACEPARENT: traceparent})
        )
        made.append(
            checked_envelope(
                m, transport, data, key, idempotency or m, priority, headers, 1, now, kind
            )
        )
    return made


def check_timeout(timeout: object) -> None:
    """A wait's `timeout`: seconds >= 0, or None for no limit."""
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not timeout >= 0  # NaN too
    ):
        raise ValueError(f"timeout must be seconds >= 0 or None, got {timeout!r}")


def check_transports(transports: object) -> dict[str, Transport]:
    """`Runtime.open`'s transports: a mapping of non-empty names to callables."""
    if not isinstance(transports, Mapping):
        raise ValueError(
            "transports must be a mapping of name to callable ({} for a runtime that only "
            f"consumes), got {type(transports).__name__}"
        )
    checked: dict[str, Transport] = {}
    for name, transport in transports.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"transport names must be non-empty str, got {name!r}")
        if not callable(transport):
            raise TypeError(f"transport {name!r} must be callable (Envelope) -> None")
        checked[name] = transport
    return checked


def check_per_transport(config: RuntimeConfig, transports: Mapping[str, object]) -> None:
    """A per-transport setting for a transport not given to `open` would be ignored
    without a word (a typo, a renamed transport): refuse it."""
    for setting in (
        "retry_per_transport",
        "ack_timeout_per_transport",
        "concurrency_per_transport",
        "rate_limits",
    ):
        unknown = sorted(set(getattr(config, setting)) - set(transports))
        if unknown:
            known = ", ".join(sorted(transports)) or "none"
            raise ValueError(
                f"RuntimeConfig.{setting} names transport(s) {', '.join(map(repr, unknown))} "
                f"that this runtime does not have (it has: {known}); a consumer's handler "
                "takes its own ack_timeout attribute instead"
            )
