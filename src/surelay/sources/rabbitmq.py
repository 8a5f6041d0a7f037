"""`RabbitMQSource`: a RabbitMQ queue consumed with manual acks.

The message id (the inbox key) is the AMQP `message_id`, else a hash of the delivery's
content (exchange, routing key, properties, headers but those the broker sets on a
redelivery, body: a redelivery hashes the same, and so do two identical messages without
an id, which the inbox then takes as one).
Each message's origin (`rabbitmq-queue`, `rabbitmq-exchange`, `rabbitmq-routing-key`,
`rabbitmq-redelivered`, and `rabbitmq-message-id` when it has one) goes with it into
surelay (a dead letter shows it); its AMQP headers become the envelope's headers
(values that are not text as their JSON).

The broker pushes at most `prefetch` unacknowledged messages (`basic.qos`); the runtime
takes them only while it has room (its pressure), so a slow handler leaves the rest in
the queue and at most `prefetch` wait in the process. Messages arrived and not yet taken
are given back (`basic.nack` with requeue) when the consumer closes. The queue must
exist (declared by its owner, with the arguments that matter to it: durable,
`x-queue-type: quorum`, `x-max-priority`); a missing one, or a consumer the broker
cancels (its queue deleted), is a `SourceError` that says so, tried again.

With `dead_letter_exchange`, a message surelay dead-letters is also published there,
confirmed, in the style of RabbitMQ's own dead-lettering: the same body, `message_id`
and headers, the original routing key, and an `x-death` header (`reason`, `queue`,
`exchange`, `routing-keys`, `count`, `time`) with surelay's reason beside it. Needs aiormq
(`pip install surelay[rabbitmq]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import hashlib
import json
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from surelay.envelope import Envelope
from surelay.policy.forwarding import REASON, REASON_CLASS
from surelay.sources.inbound import Inbound
from surelay.sources.jetstream import SourceError
from surelay.transports._checks import check_timeout
from surelay.transports.rabbitmq import (
    AMQP_PRIORITY,
    STEERING,
    Publisher,
    check_url,
    require_aiormq,
)

try:
    import aiormq
    import aiormq.exceptions
    from pamqp.commands import Basic
except ImportError:  # pragma: no cover - the transport's guard says what to install
    pass

__all__ = [
    "DEAD_LETTER_HEADERS",
    "ORIGIN_EXCHANGE",
    "ORIGIN_MESSAGE_ID",
    "ORIGIN_QUEUE",
    "ORIGIN_REDELIVERED",
    "ORIGIN_ROUTING_KEY",
    "RabbitMQSource",
    "header_text",
]

logger = logging.getLogger("surelay.sources")

ORIGIN_QUEUE = "rabbitmq-queue"
ORIGIN_EXCHANGE = "rabbitmq-exchange"
ORIGIN_ROUTING_KEY = "rabbitmq-routing-key"
ORIGIN_REDELIVERED = "rabbitmq-redelivered"
ORIGIN_MESSAGE_ID = "rabbitmq-message-id"
DEAD_LETTER_HEADERS = (
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
)
"""Headers a forwarded dead letter gets from surelay (a copy's own are replaced)."""


def header_text(value: object) -> str:
    """An AMQP header value as envelope header text: text as it is, bytes decoded, a
    table or array as JSON (its bytes decoded, its timestamps in ISO 8601)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return json.dumps(value, default=_json_default, separators=(",", ":"), sort_keys=True)


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


class RabbitMQSource:
    """Messages of the queue `queue` on the broker at `url`, at most `prefetch`
    unacknowledged at once. `dead_letter_exchange`: an exchange that also receives what
    surelay dead-letters (see the module docstring). Raises `ValueError`/`TypeError` for
    bad arguments, `ImportError` without aiormq."""

    def __init__(
        self,
        url: str,
        queue: str,
        *,
        prefetch: int = 256,
        dead_letter_exchange: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        require_aiormq("RabbitMQSource")
        self.url = check_url(url)
        if not isinstance(queue, str) or not queue or len(queue.encode("utf-8")) > 255:
            raise ValueError(f"queue must be a queue name (1 to 255 bytes), got {queue!r}")
        if (
            isinstance(prefetch, bool)
            or not isinstance(prefetch, int)
            or not 1 <= prefetch <= 65535
        ):
            raise ValueError(f"prefetch must be an int in [1, 65535], got {prefetch!r}")
        if dead_letter_exchange is not None and not isinstance(dead_letter_exchange, str):
            raise TypeError(
                f"dead_letter_exchange must be an exchange name or None, got "
                f"{dead_letter_exchange!r}"
            )
        self.queue = queue
        self.prefetch = prefetch
        self.dead_letter_exchange = dead_letter_exchange
        self.timeout = check_timeout(timeout)
        self.description = f"RabbitMQ queue {queue!r}"
        self._connection: Any = None
        self._channel: Any = None
        self._cancelled_by_broker = False
        self._acks: _Acks | None = None
        self._arrived: deque[Any] = deque()
        self._signal = asyncio.Event()

    # -- the Source protocol ---------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check the queue, and start consuming it."""
        await self.close()
        self._arrived.clear()
        self._signal = asyncio.Event()  # of this loop (a restarted consumer has a new one)
        self._cancelled_by_broker = False
        self._connection = await asyncio.wait_for(aiormq.connect(self.url), self.timeout)
        channel = self._channel = await asyncio.wait_for(
            self._connection.channel(publisher_confirms=False), self.timeout
        )
        self._acks = _Acks(channel)
        try:
            await asyncio.wait_for(channel.queue_declare(self.queue, passive=True), self.timeout)
        except aiormq.exceptions.ChannelNotFoundEntity as error:
            raise SourceError(
                f"RabbitMQ has no queue {self.queue!r}: declare it (durable; quorum or with "
                "x-max-priority as it needs) or fix the name; surelay tries again meanwhile"
            ) from error
        except aiormq.exceptions.ChannelAccessRefused as error:
            raise SourceError(
                f"RabbitMQ refused access to queue {self.queue!r}: {error}"
            ) from error
        await asyncio.wait_for(channel.basic_qos(prefetch_count=self.prefetch), self.timeout)
        channel.on_consumer_cancel_callbacks.add(self._cancelled)
        await asyncio.wait_for(
            channel.basic_consume(self.queue, self._arrive, no_ack=False), self.timeout
        )

    async def _cancelled(self, _frame: Any) -> None:
        """The broker cancelled the consumer (its queue deleted): `fetch` says so, and the
        consumer opens the source again (which waits for the queue)."""
        self._cancelled_by_broker = True
        self._signal.set()

    @property
    def connected(self) -> bool:
        """Whether the connection and its channel are up now."""
        channel = self._channel
        return channel is not None and not channel.is_closed

    async def _arrive(self, message: Any) -> None:
        if self._acks is not None:
            self._acks.delivered(message.delivery.delivery_tag)
        self._arrived.append(message)
        self._signal.set()

    async def fetch(self, count: int, timeout: float) -> list[Inbound]:
        channel = self._channel
        if channel is None:
            raise RuntimeError(f"{self.description} is not open")
        if channel.is_closed:
            raise SourceError(f"{self.description}: the channel closed ({channel.closing})")
        if self._cancelled_by_broker:
            raise SourceError(f"RabbitMQ cancelled the consumer of {self.description}")
        if not self._arrived:
            self._signal.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._signal.wait(), timeout)
            await asyncio.sleep(0)  # let the rest of a burst arrive
        out: list[Inbound] = []
        while self._arrived and len(out) < count:
            out.append(self._inbound(self._arrived.popleft()))
        return out

    def _inbound(self, message: Any) -> Inbound:
        delivery = message.delivery
        properties = message.header.properties
        raw = properties.headers or {}
        headers = {str(name): header_text(value) for name, value in raw.items()}
        origin = {
            ORIGIN_QUEUE: self.queue,
            ORIGIN_EXCHANGE: delivery.exchange or "",
            ORIGIN_ROUTING_KEY: delivery.routing_key or "",
            ORIGIN_REDELIVERED: "true" if delivery.redelivered else "false",
        }
        message_id = properties.message_id
        if message_id:
            origin[ORIGIN_MESSAGE_ID] = message_id
        else:
            message_id = (
                f"{self.queue}:{_content_hash(delivery, properties, headers, message.body)}"
            )
        acks, tag = self._acks, delivery.delivery_tag

        async def ack() -> None:
            if acks is not None:
                acks.ack(tag)

        async def nak() -> None:
            if acks is not None:
                await acks.nack(tag)

        return Inbound(
            message_id=message_id,
            payload=message.body,
            headers=headers,
            origin=origin,
            ack=ack,
            nak=nak,
        )

    async def close(self) -> None:
        """Give back what arrived and was not taken (so the broker delivers it again at
        once), then close the connection (which requeues anything still unacked)."""
        acks = self._acks
        while self._arrived:
            message = self._arrived.popleft()
            if acks is not None:
                with contextlib.suppress(Exception):
                    await acks.nack(message.delivery.delivery_tag)
        if acks is not None:
            await acks.drain()
        connection, self._connection, self._channel = self._connection, None, None
        self._acks = None
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), 2.0)
            except Exception as error:  # closing for good: say it, go on
                logger.debug("closing the RabbitMQ connection: %r", error)

    # -- dead letters to the dead-letter exchange ----------------------------------------

    def dead_letter_forwarder(self) -> DeadLetterForwarder | None:
        """The transport that publishes this source's dead letters to its
        `dead_letter_exchange` (None without one); the runtime delivers each dead letter
        of the consumer through it, durably, with retries."""
        if self.dead_letter_exchange is None:
            return None
        return DeadLetterForwarder(self.url, self.dead_letter_exchange, self.queue, self.timeout)


class DeadLetterForwarder:
    """Publishes a dead letter forwarded by the runtime (its envelope carries the
    original's headers and origin, and surelay's `Surelay-Dead-Letter-*` headers) to the
    dead-letter exchange, as RabbitMQ's own dead-lettering would: confirmed, mandatory
    (no queue bound to the exchange is a `PermanentError`: the copy is a dead letter of
    its own then, and the original stays in surelay's dead letters either way)."""

    def __init__(self, url: str, exchange: str, queue: str, timeout: float) -> None:
        self.exchange = exchange
        self.queue = queue
        self.ack_timeout = 3 * timeout + 1.0
        self._publisher = Publisher(url, timeout, f"dead-letter exchange {exchange!r}")

    async def __call__(self, envelope: Envelope) -> None:
        headers = dict(envelope.headers)
        origin = {
            name: headers.pop(name, "")
            for name in (ORIGIN_QUEUE, ORIGIN_EXCHANGE, ORIGIN_ROUTING_KEY, ORIGIN_REDELIVERED)
        }
        message_id = headers.pop(ORIGIN_MESSAGE_ID, None)
        reason_class = headers.get(REASON_CLASS, "failed")
        for name in list(headers):  # the broker's to set, not a consumed message's
            if name.lower() in STEERING or name.lower() in DEAD_LETTER_HEADERS:
                del headers[name]
        routing_key = origin[ORIGIN_ROUTING_KEY] or self.queue
        death = {
            "reason": "rejected",
            "queue": origin[ORIGIN_QUEUE] or self.queue,
            "exchange": origin[ORIGIN_EXCHANGE],
            "routing-keys": [routing_key],
            "count": 1,
            "time": datetime.datetime.fromtimestamp(envelope.created_at, datetime.UTC),
            "surelay-reason-class": reason_class,
            "surelay-reason": headers.get(REASON, ""),
        }
        amqp_headers: dict[str, Any] = {
            **headers,
            "x-death": [death],
            "x-first-death-reason": "rejected",
            "x-first-death-queue": death["queue"],
            "x-first-death-exchange": death["exchange"],
        }
        properties = Basic.Properties(
            message_id=message_id or envelope.idempotency_key,
            delivery_mode=2,
            priority=AMQP_PRIORITY[envelope.priority],
            message_type=envelope.type,
            headers=amqp_headers,
        )
        await self._publisher.publish(
            envelope.payload, exchange=self.exchange, routing_key=routing_key, properties=properties
        )

    async def aclose(self) -> None:
        await self._publisher.aclose()


class _Acks:
    """The acknowledgements of one channel, coalesced: once every message delivered up
    to a tag is settled, one `basic.ack` with `multiple` acknowledges them all (a frame
    per message costs the consumer as much as the rest of taking it). A message is
    acknowledged only after its own `ack()`, never by another's; a `nack` goes at once."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._unsettled: deque[int] = deque()
        """Delivery tags delivered and not settled, in delivery order."""
        self._acked: set[int] = set()
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def delivered(self, tag: int) -> None:
        self._unsettled.append(tag)

    def ack(self, tag: int) -> None:
        self._acked.add(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def nack(self, tag: int) -> None:
        """Give one message back (requeued at once)."""
        with contextlib.suppress(ValueError):
            self._unsettled.remove(tag)
        self._acked.discard(tag)
        if not self.channel.is_closed:
            await self.channel.basic_nack(tag, requeue=True)
        self._flush()  # what waited behind it may go now

    def _settled(self) -> int | None:
        """The last tag of the settled run at the head (taken off), or None."""
        upto = None
        unsettled, acked = self._unsettled, self._acked
        while unsettled and unsettled[0] in acked:
            upto = unsettled.popleft()
            acked.discard(upto)
        return upto

    def _flush(self) -> None:
        self._scheduled = False
        upto = self._settled()
        if upto is None or self.channel.is_closed:
            return
        task = asyncio.get_running_loop().create_task(self._send(upto))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, upto: int) -> None:
        try:
            await self.channel.basic_ack(upto, multiple=True)
        except Exception as error:  # the broker redelivers; the inbox drops it then
            logger.debug("could not acknowledge up to delivery %d: %r", upto, error)

    async def drain(self) -> None:
        """Send what is settled and wait for what is being sent (before a close)."""
        self._flush()
        if self._sending:
            await asyncio.wait(list(self._sending), timeout=2.0)


def _content_hash(delivery: Any, properties: Any, headers: Mapping[str, str], body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (
        delivery.exchange or "",
        delivery.routing_key or "",
        properties.correlation_id or "",
        str(properties.timestamp or ""),
        json.dumps(sorted((k, v) for k, v in headers.items() if not _broker_set(k))),
    ):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()[:32]


def _broker_set(name: str) -> bool:
    """A header the broker adds or changes on a redelivery (a quorum queue's delivery
    count, dead-lettering's records): not part of what a message is."""
    lowered = name.lower()
    return lowered == "x-delivery-count" or lowered in DEAD_LETTER_HEADERS
