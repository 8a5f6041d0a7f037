"""`RabbitMQTransport`: publish each message to a RabbitMQ exchange with publisher confirms.

A call returns only once the broker confirms the publish (`basic.ack` on a confirm-mode
channel: a persistent message to a durable queue is then on disk, or in a quorum queue's
majority). It is published `mandatory`, so a message no queue is bound to receive comes
back (`basic.return`) and is a `PermanentError` that says so, instead of being dropped by
the broker. The AMQP `message_id` is the envelope's idempotency key (a consumer's dedup
key: a retry after a lost confirm re-publishes the same id); surelay's headers and the
attempt's `traceparent` travel as AMQP headers; `Priority` maps to the AMQP priority
(HIGH 9, NORMAL 5, LOW 1) that a queue declared with `x-max-priority` orders by.

Outcomes, with a reason that says which: confirmed is delivered. Permanent: unroutable,
an exchange the broker does not have (`NOT_FOUND`), access refused, a message the broker
refuses as a precondition (over `max_message_size`). Transient: a `basic.nack` (the
broker could not store it), no confirm within `timeout` (a resource alarm blocks
publishers; flow control), a channel or connection closed by the broker, a broker that
is down or restarting.

One connection and one confirm-mode channel per transport, made on the runtime's event
loop at the first call and made again after either is lost; while the broker cannot be
reached, calls fail transiently, the transport's breaker opens and messages wait in the
outbox. Needs aiormq (`pip install surelay[rabbitmq]`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from surelay.envelope import Envelope, Priority
from surelay.errors import PermanentError, TransientError
from surelay.telemetry import current_traceparent
from surelay.transports._checks import check_timeout

try:
    import aiormq
    import aiormq.exceptions
    from aiormq.abc import ChannelFrame
    from pamqp.commands import Basic
    from pamqp.frame import marshal
    from pamqp.header import ContentHeader
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    _HAVE_AIORMQ = False
else:
    _HAVE_AIORMQ = True

__all__ = ["AMQP_PRIORITY", "Publisher", "RabbitMQTransport", "require_aiormq"]

logger = logging.getLogger("surelay.transports")

AMQP_PRIORITY: Mapping[Priority, int] = {Priority.HIGH: 9, Priority.NORMAL: 5, Priority.LOW: 1}
"""The AMQP priority of each surelay priority (a queue needs `x-max-priority` >= 9 to
tell all three apart; with `x-max-priority: 5`, HIGH and NORMAL are one)."""

STEERING = frozenset({"cc", "bcc", "x-delay", "x-death", "x-match"})
"""Headers the broker acts on (CC and BCC route copies to other queues, `x-delay` holds
a message in the delayed-message exchange, `x-death` is the broker's own record): a
message's own headers of these names are dropped, as they are not the sender's to set."""

NO_ROUTE = 312


def require_aiormq(what: str) -> None:
    if not _HAVE_AIORMQ:
        raise ImportError(
            f"{what} needs aiormq, which is not installed: pip install surelay[rabbitmq]"
        )


def check_url(url: object) -> str:
    if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
        raise ValueError(f"url must be an amqp:// or amqps:// URL, got {url!r}")
    return url


def amqp_headers(envelope: Envelope) -> dict[str, Any]:
    """The AMQP headers of a publish: the message's own (but `STEERING`), the attempt's
    `traceparent` when the runtime calls, and surelay's own."""
    headers: dict[str, Any] = {
        name: value for name, value in envelope.headers.items() if name.lower() not in STEERING
    }
    headers.update(current_traceparent())
    headers["Surelay-Message-Id"] = envelope.message_id
    headers["Surelay-Attempt"] = str(envelope.attempt)
    if envelope.key is not None:
        headers["Surelay-Key"] = envelope.key
    return headers


class Publisher:
    """One connection and one confirm-mode channel on the running loop, made again when
    lost; `publish` returns once the broker confirms. Shared by the transport and a
    source's dead-letter exchange forwarding."""

    def __init__(self, url: str, timeout: float, what: str) -> None:
        self.url = url
        self.timeout = timeout
        self._what = what
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._connection: Any = None
        self._batcher: _Batcher | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Any,
    ) -> None:
        where = f"exchange {exchange!r}" if exchange else "the default exchange"
        batcher = await self._open()
        try:
            await batcher.publish(body, exchange, routing_key, properties)
        except aiormq.exceptions.PublishError as error:
            frame = error.frame
            if getattr(frame, "reply_code", None) == NO_ROUTE:
                raise PermanentError(
                    f"RabbitMQ returned the message: no queue is bound to {where} for "
                    f"routing key {routing_key!r} (NO_ROUTE); bind a queue, then replay"
                ) from error
            raise PermanentError(f"RabbitMQ returned the message: {error}") from error
        except aiormq.exceptions.ChannelNotFoundEntity as error:
            # the exchange is the transport's: every publish on the channel meets it
            self._forget(batcher)
            raise PermanentError(
                f"RabbitMQ refused {where}: it does not exist ({_reply(error)}); declare it, "
                "then replay"
            ) from error
        except aiormq.exceptions.ChannelAccessRefused as error:
            self._forget(batcher)
            raise PermanentError(
                f"RabbitMQ refused {where}: access refused ({_reply(error)})"
            ) from error
        except aiormq.exceptions.ChannelPreconditionFailed as error:
            # the broker closed the channel for one message (over `max_message_size`): every
            # publish under way on it fails alike, but only the one it names is refused
            self._forget(batcher)
            reply = _reply(error)
            if f"message size {len(body)} " in reply:
                raise PermanentError(
                    f"RabbitMQ refused the message for {where}: {reply}"
                ) from error
            raise TransientError(
                f"RabbitMQ closed the channel for another message ({reply}); published again"
            ) from error
        except aiormq.exceptions.DeliveryError as error:  # a basic.nack
            raise TransientError(
                f"RabbitMQ nacked the message for {where}: it was not stored"
            ) from error
        except TimeoutError as error:
            raise TransientError(
                f"no publisher confirm from RabbitMQ for {where} within {self.timeout}s (a "
                "resource alarm blocking publishers, flow control, or a broker not answering)"
            ) from error
        except (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError) as error:
            self._drop(batcher)
            raise TransientError(f"publishing to RabbitMQ {where} failed: {error!r}") from error

    async def _open(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or the runtime's loop was replaced
            self._loop, self._lock = loop, asyncio.Lock()
            self._connection, self._batcher = None, None
        batcher = self._batcher
        if batcher is not None and not batcher.channel.is_closed:
            return batcher
        assert self._lock is not None
        async with self._lock:
            if self._batcher is not None and not self._batcher.channel.is_closed:
                return self._batcher
            try:
                connection = self._connection
                if connection is None or connection.is_closed:
                    self._connection = None
                    connection = await asyncio.wait_for(aiormq.connect(self.url), self.timeout)
                    self._connection = connection
                channel = await asyncio.wait_for(
                    connection.channel(publisher_confirms=True, on_return_raises=True),
                    self.timeout,
                )
                self._batcher = _Batcher(channel, self.timeout)
            except Exception as error:
                self._drop(None)
                raise TransientError(
                    f"{self._what} cannot connect to RabbitMQ at {_safe(self.url)}: {error!r}"
                ) from error
            return self._batcher

    def _forget(self, batcher: _Batcher) -> None:
        """The broker closed `batcher`'s channel: the next publish opens another (unless
        one was opened meanwhile)."""
        if self._batcher is batcher:
            self._batcher = None

    def _drop(self, batcher: _Batcher | None) -> None:
        """The connection of `batcher` (None: the current one) failed: close it, and
        make the next publish connect again (unless one has connected meanwhile)."""
        if batcher is not None and self._batcher is not batcher:
            return  # a late failure of a connection given up already
        connection, self._connection, self._batcher = self._connection, None, None
        if connection is not None and not connection.is_closed:
            task = asyncio.get_running_loop().create_task(_quietly_close(connection))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        connection, self._connection, self._batcher = self._connection, None, None
        if connection is not None:
            await _quietly_close(connection)


class _Batcher:
    """Publishes on one confirm-mode channel, the publishes of one turn of the event loop
    written as one frame buffer: aiormq's `basic_publish` takes a lock, a drain and a
    write-queue round trip per message, which cost three times the CPU of this (see
    benchmarks/rabbitmq.py). The bookkeeping is aiormq's own (delivery tags, the
    confirmation futures its reader resolves, returned messages found by `message_id`),
    so confirms, nacks, returns and a closing channel reach each publish as they do
    through `basic_publish`; frames reach the connection in delivery-tag order."""

    def __init__(self, channel: Any, timeout: float) -> None:
        self.channel = channel
        self.timeout = timeout
        self._waiting: list[tuple[bytes, str, str, Any, asyncio.Future[Any]]] = []
        self._outgoing: deque[Any] = deque()
        self._pump: asyncio.Task[None] | None = None
        self._methods: dict[tuple[str, str], bytes] = {}
        """`basic.publish` frames encoded, by exchange and routing key (the same for
        most messages of a transport)."""
        self._deadlines: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._expired: set[asyncio.Future[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def publish(self, body: bytes, exchange: str, routing_key: str, properties: Any) -> None:
        """Publish; return once the broker confirms (raises on a nack, a return, the
        channel closing, or `TimeoutError` with no confirm within `timeout`). One timer
        task for all publishes, not one per publish (`asyncio.timeout` costs more than
        the rest of the publish)."""
        channel = self.channel
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
        confirmation: asyncio.Future[Any] = channel.create_future()
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append((body, exchange, routing_key, properties, confirmation))
        self._deadlines.append((loop.time() + self.timeout, confirmation))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep())
        try:
            await confirmation
        except asyncio.CancelledError:
            if confirmation in self._expired:  # cancelled by the sweep, not by our caller
                self._expired.discard(confirmation)
                raise TimeoutError from None
            raise

    async def _sweep(self) -> None:
        """Cancel the publishes past their deadline (in deadline order: one timeout)."""
        loop = asyncio.get_running_loop()
        deadlines = self._deadlines
        while deadlines:
            await asyncio.sleep(min(0.1, self.timeout / 4))
            now = loop.time()
            while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
                _, confirmation = deadlines.popleft()
                if not confirmation.done():
                    self._expired.add(confirmation)
                    confirmation.cancel()

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        channel = self.channel
        if channel.is_closed:
            for *_, confirmation in waiting:
                if not confirmation.done():
                    confirmation.set_exception(
                        aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
                    )
            return
        number = channel.number
        frames: list[bytes] = []
        for body, exchange, routing_key, properties, confirmation in waiting:
            if confirmation.done():  # cancelled (timed out) before it was written
                continue
            try:
                method = self._methods.get((exchange, routing_key))
                if method is None:
                    if len(self._methods) >= 1024:  # routing keys per message: bounded
                        self._methods.clear()
                    method = self._methods[exchange, routing_key] = marshal(
                        Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True),
                        number,
                    )
                encoded = b"".join(
                    (
                        method,
                        marshal(ContentHeader(properties=properties, body_size=len(body)), number),
                        *(marshal(part, number) for part in channel._split_body(body)),
                    )
                )
            except Exception as error:  # this one cannot be encoded; the rest go
                confirmation.set_exception(PermanentError(f"cannot encode the message: {error}"))
                continue
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            channel.confirmations[tag] = confirmation
            channel.message_id_delivery_tag[properties.message_id] = tag
            confirmation.add_done_callback(
                functools.partial(_forget, channel, properties.message_id, tag)
            )
            frames.append(encoded)
        if frames:
            self._outgoing.append(ChannelFrame(payload=b"".join(frames), should_close=False))
            if self._pump is None or self._pump.done():
                self._pump = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """Hand the frame buffers to the connection's writer, in order (its queue is
        bounded: a slow socket holds them here, not out of order)."""
        queue = self.channel.write_queue
        while self._outgoing:
            frame = self._outgoing.popleft()
            try:
                await queue.put(frame)
            except BaseException:  # the loop is closing: the channel goes with it
                self._outgoing.clear()
                raise


def _forget(channel: Any, message_id: str, tag: int, _done: asyncio.Future[Any]) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]


async def _quietly_close(connection: Any) -> None:
    try:
        await asyncio.wait_for(connection.close(), 2.0)
    except Exception as error:  # closing for good: say it, go on
        logger.debug("closing a RabbitMQ connection: %r", error)


def _reply(error: BaseException) -> str:
    """The broker's reply text of a channel close (`NOT_FOUND - no exchange 'x' ...`)."""
    args = [str(a) for a in error.args if a]
    return " ".join(args) or type(error).__name__


def _safe(url: str) -> str:
    """`url` without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


class RabbitMQTransport:
    """An async transport that publishes `envelope.payload` to `exchange` with the routing
    key `routing_key_for(envelope)` (else `routing_key`, else the transport's name) and
    returns once the broker confirms: `await transport(e)`.

    `timeout`: seconds to wait to connect and for the confirm. `persistent`: delivery
    mode 2, so a durable queue keeps the message across a broker restart. Raises
    `ValueError`/`TypeError` for bad arguments, `ImportError` without aiormq.
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: str = "",
        routing_key: str | None = None,
        routing_key_for: Callable[[Envelope], str] | None = None,
        timeout: float = 5.0,
        persistent: bool = True,
    ) -> None:
        require_aiormq("RabbitMQTransport")
        self.url = check_url(url)
        if not isinstance(exchange, str):
            raise TypeError(
                f"exchange must be a str ('' is the default exchange), got {exchange!r}"
            )
        if routing_key is not None and (
            not isinstance(routing_key, str) or len(routing_key.encode("utf-8")) > 255
        ):
            raise ValueError(f"routing_key must be a str of at most 255 bytes, got {routing_key!r}")
        if routing_key_for is not None and not callable(routing_key_for):
            raise TypeError("routing_key_for must be a callable (Envelope) -> str")
        if not isinstance(persistent, bool):
            raise TypeError(f"persistent must be a bool, got {persistent!r}")
        self.exchange = exchange
        self.routing_key = routing_key
        self.routing_key_for = routing_key_for
        self.timeout = check_timeout(timeout)
        self.persistent = persistent
        # the runtime's ack timeout for a call: connecting, opening a channel, publishing
        self.ack_timeout = 3 * self.timeout + 1.0
        self._publisher = Publisher(self.url, self.timeout, "RabbitMQTransport")

    async def __call__(self, envelope: Envelope) -> None:
        routing_key = self._routing_key(envelope)
        for what, value in (("idempotency key", envelope.idempotency_key), ("type", envelope.type)):
            if value is not None and len(value.encode("utf-8")) > 255:
                raise PermanentError(
                    f"the message's {what} is {len(value.encode('utf-8'))} bytes; AMQP carries "
                    "at most 255 (message_id, type)"
                )
        properties = Basic.Properties(
            message_id=envelope.idempotency_key,
            delivery_mode=2 if self.persistent else 1,
            priority=AMQP_PRIORITY[envelope.priority],
            message_type=envelope.type,
            headers=amqp_headers(envelope),
        )
        await self._publisher.publish(
            envelope.payload, exchange=self.exchange, routing_key=routing_key, properties=properties
        )

    def _routing_key(self, envelope: Envelope) -> str:
        if self.routing_key_for is not None:
            key = self.routing_key_for(envelope)
            if not isinstance(key, str) or len(key.encode("utf-8")) > 255:
                raise PermanentError(
                    f"routing_key_for gave {key!r}, not a routing key (a str of at most 255 bytes)"
                )
            return key
        return self.routing_key if self.routing_key is not None else envelope.transport

    async def aclose(self) -> None:
        """Close the connection (on the loop it was made on)."""
        await self._publisher.aclose()
