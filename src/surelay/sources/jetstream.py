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
import logging
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

__all__ = ["JetStreamSource"]

logger = logging.getLogger("surelay.sources")

CONNECT_TIMEOUT = 5.0


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
            await js.consumer_info(self.stream, self.durable)
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
            await js.add_consumer(self.stream, config)
        self._subscription = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    async def fetch(self, count: int, timeout: float) -> list[Inbound]:
        if self._subscription is None:
            raise RuntimeError(f"{self.description} is not open")
        try:
            messages = await self._subscription.fetch(batch=count, timeout=timeout)
        except nats.errors.TimeoutError:
            return []
        return [self._inbound(message) for message in messages]

    def _inbound(self, message: Any) -> Inbound:
        headers = {str(k): str(v) for k, v in (message.headers or {}).items()}
        sequence = message.metadata.sequence.stream
        return Inbound(
            message_id=headers.get("Nats-Msg-Id") or f"{self.stream}:{sequence}",
            payload=bytes(message.data),
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
        client, self._client, self._subscription = self._client, None, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 2.0)
            except Exception as error:  # closing for good: say it, go on
                logger.debug("closing the NATS connection: %r", error)
