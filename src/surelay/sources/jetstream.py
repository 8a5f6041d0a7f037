"""`JetStreamSource`: a NATS JetStream durable pull consumer with explicit acks.

The message id (the inbox key) is the message's `Nats-Msg-Id`, else `<stream>:<stream
sequence>`. Each message's origin (`nats-stream`, `nats-sequence`, `nats-subject`) goes
with it into surelay (a dead letter shows it).

The durable consumer is made at `open` if the stream has none of that name (explicit
acks, `ack_wait`, `max_deliver`, filtered to `subjects`), and used as it is otherwise,
so operators may tune it with the `nats` CLI. Several runtimes pulling one durable
consumer share its messages (each message goes to one of them at a time). Needs nats-py
(`pip install surelay[nats]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from surelay.sources.inbound import Inbound
from surelay.transports.jetstream import require_nats, servers_list

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js.api import AckPolicy, ConsumerConfig
except ImportError:  # pragma: no cover - the transport's guard says what to install
    pass

__all__ = ["JetStreamSource", "SourceError"]

logger = logging.getLogger("surelay.sources")

CONNECT_TIMEOUT = 5.0


class SourceError(Exception):
    """The source cannot be consumed as it is; the text says why (shown in health)."""


class JetStreamSource:
    """Messages of `stream` (those on `subjects`, if given) through the durable pull
    consumer `durable`. `ack_wait`: seconds JetStream waits for an ack before it
    delivers a message again (to this runtime or another); `max_deliver`: deliveries
    before JetStream gives up on a message (-1: never). Both apply when the consumer is
    made here. Raises `ValueError` for bad arguments, `ImportError` without nats-py."""

    def __init__(
        self,
        servers: str | Sequence[str],
        stream: str,
        *,
        durable: str,
        subjects: Sequence[str] | None = None,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
    ) -> None:
        require_nats("JetStreamSource")
        self.servers = servers_list(servers)
        for name, value in (("stream", stream), ("durable", durable)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty str, got {value!r}")
        if subjects is not None and (
            isinstance(subjects, str) or not all(isinstance(s, str) and s for s in subjects)
        ):
            raise ValueError(f"subjects must be a list of subjects, got {subjects!r}")
        if not isinstance(ack_wait, int | float) or ack_wait <= 0:
            raise ValueError(f"ack_wait must be seconds > 0, got {ack_wait!r}")
        self.stream = stream
        self.durable = durable
        self.subjects = None if subjects is None else list(subjects)
        self.ack_wait = float(ack_wait)
        self.max_deliver = max_deliver
        self.description = f"JetStream stream {stream!r}, durable consumer {durable!r}"
        self._client: Any = None
        self._subscription: Any = None
        self._inbox = ""
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._arrived: deque[Any] = deque()
        self._signal = asyncio.Event()
        self._asked = 0
        """Messages the last pull request may still bring (0: none outstanding)."""
        self._asked_until = 0.0
        self._batch_limit = 0
        """The consumer's `max_ack_pending` (a pull asking for more is refused)."""

    async def open(self) -> None:
        """Connect, and find (or make) the durable consumer."""
        await self.close()

        async def quiet(error: Exception) -> None:
            logger.debug("NATS connection for %s: %r", self.description, error)

        self._client = await asyncio.wait_for(
            nats.connect(
                servers=self.servers,
                connect_timeout=2.0,
                reconnect_time_wait=0.25,
                max_reconnect_attempts=-1,
                error_cb=quiet,
            ),
            CONNECT_TIMEOUT,
        )
        js = self._client.jetstream()
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            config = ConsumerConfig(
                durable_name=self.durable,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_deliver=self.max_deliver,
            )
            if self.subjects is not None and len(self.subjects) == 1:
                config.filter_subject = self.subjects[0]
            elif self.subjects is not None:
                config.filter_subjects = self.subjects
            try:
                info = await js.add_consumer(self.stream, config)
            except nats.js.errors.NotFoundError as error:  # the stream itself is missing
                raise SourceError(
                    f"JetStream has no stream {self.stream!r} on {', '.join(self.servers)} "
                    f"({getattr(error, 'description', None) or 'not found'}): create it "
                    f"(e.g. `nats stream add {self.stream} --subjects ...`) or fix the name; "
                    "surelay tries again meanwhile"
                ) from error
        self._check(info.config)
        limit = info.config.max_ack_pending or 0
        self._batch_limit = limit if limit > 0 else 0
        # Pull requests go out by hand and their messages come to an inbox of ours:
        # nats-py's fetch awaits each message with a timeout of its own, which costs
        # more than the rest of taking it.
        self._arrived.clear()
        self._signal = asyncio.Event()  # of this loop (a restarted consumer has a new one)
        self._asked = 0
        self._inbox = self._client.new_inbox()
        self._subscription = await self._client.subscribe(self._inbox, cb=self._arrive)

    def _check(self, config: Any) -> None:
        """An existing consumer must be one surelay can rely on: acks are sent only once a
        message is durable, so they must be explicit and per message, and pulled."""
        policy = getattr(config.ack_policy, "value", config.ack_policy)
        if policy != "explicit":
            raise SourceError(
                f"{self.description} has ack policy {policy!r}; surelay needs 'explicit' "
                "(it acknowledges each message once it is durable): make another consumer"
            )
        if config.deliver_subject:
            raise SourceError(
                f"{self.description} is a push consumer; surelay needs a pull consumer"
            )

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up now (nats-py reconnects by itself)."""
        return self._client is not None and bool(self._client.is_connected)

    async def _arrive(self, message: Any) -> None:
        self._arrived.append(message)
        self._signal.set()

    async def fetch(self, count: int, timeout: float) -> list[Inbound]:
        if self._subscription is None:
            raise RuntimeError(f"{self.description} is not open")
        out = self._drain(count)
        now = time.monotonic()
        if self._asked and now > self._asked_until:  # its end was lost (a reconnect)
            self._asked = 0
        if len(out) < count and not self._asked:
            wanted = count - len(out)
            self._asked = min(wanted, self._batch_limit) if self._batch_limit else wanted
            self._asked_until = now + timeout + 1.0
            request = {"batch": self._asked, "expires": int(timeout * 1e9)}
            await self._client.publish(
                self._next_subject, json.dumps(request).encode(), reply=self._inbox
            )
        if not out:
            self._signal.clear()
            if not self._arrived:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._signal.wait(), timeout)
            await asyncio.sleep(0)  # let the rest of a burst arrive
            out = self._drain(count)
        return [self._inbound(message) for message in out]

    def _drain(self, count: int) -> list[Any]:
        """Messages arrived, up to `count`. A status message from the server (no reply
        subject, no data) ends the request it answers: no messages or the request
        expired (404, 408) as expected, anything else as an error."""
        out: list[Any] = []
        arrived = self._arrived
        while arrived and len(out) < count:
            message = arrived.popleft()
            headers = message.headers
            status = headers.get("Status") if headers and not message.reply else None
            if status is not None:
                self._asked = 0
                if status == "100":  # a heartbeat
                    continue
                if status not in ("404", "408"):
                    arrived.extendleft(reversed(out))  # given back below, with the rest
                    raise SourceError(
                        f"{self.description}: JetStream answered {status} "
                        f"{headers.get('Description', '')}".rstrip()
                    )
                continue
            out.append(message)
            if self._asked:
                self._asked -= 1
        return out

    def _inbound(self, message: Any) -> Inbound:
        headers = dict(message.headers) if message.headers else {}
        sequence = _stream_sequence(message)
        return Inbound(
            message_id=headers.get("Nats-Msg-Id") or f"{self.stream}:{sequence}",
            payload=message.data,
            headers=headers,
            origin={
                "nats-stream": self.stream,
                "nats-sequence": str(sequence),
                "nats-subject": message.subject,
            },
            ack=message.ack,
            nak=message.nak,
        )

    async def close(self) -> None:
        """Give back what arrived and was not taken (so JetStream delivers it again at
        once, not after its ack wait), then close the connection."""
        while self._arrived:
            message = self._arrived.popleft()
            if message.reply:
                with contextlib.suppress(Exception):
                    await message.nak()
        client, self._client, self._subscription = self._client, None, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 2.0)
            except Exception as error:  # closing for good: say it, go on
                logger.debug("closing the NATS connection: %r", error)


def _stream_sequence(message: Any) -> int:
    """The stream sequence from the ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.
    <stream seq>...` (9 tokens), or with a domain and an account hash before the stream
    (11 or more); nats-py's parser (slower) for anything else."""
    tokens = message.reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    if len(tokens) >= 11:
        return int(tokens[7])
    return int(message.metadata.sequence.stream)
