"""`JetStreamTransport`: publish each message to a NATS JetStream stream.

A call returns once the server's publish ack says the message is stored. `Nats-Msg-Id`
is the envelope's idempotency key, so a re-publish (a retry after a lost ack, a replay)
within the stream's duplicate window is dropped by the server, not stored twice. The
envelope's headers travel as NATS headers (its `traceparent` that of the attempt's
`surelay.deliver` span when the runtime calls; its `Nats-*` headers, which would steer
the stream, dropped), with `Surelay-Message-Id`, `Surelay-Key` and `Surelay-Attempt`.

Outcomes: stored (or a duplicate the stream already holds) is delivered. Permanent,
with a reason that says which: a subject no stream captures, a message JetStream
refuses with a 4xx (over the stream's `max_msg_size`, error 10054, among others) or one
over the server's `max_payload`. Transient: no answer in `timeout` seconds, no responder
while a stream does capture the subject (a leader election, a server starting), a server
that is down or a connection being re-established, and every other server error
(JetStream's 5xx: a full stream that discards new messages answers so, and its messages
wait in the outbox until there is room).

One connection per transport (a runtime owns its transports), made on the runtime's
event loop at the first call and re-established by nats-py by itself; while no server
can be reached, calls fail transiently, the transport's breaker opens and messages wait
in the outbox. Needs nats-py (`pip install surelay[nats]`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from surelay.envelope import Envelope
from surelay.errors import PermanentError, TransientError
from surelay.routing import partition_for
from surelay.telemetry import current_traceparent
from surelay.transports._checks import check_timeout

try:
    import nats
    import nats.errors
    import nats.js.errors
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    _HAVE_NATS = False
else:
    _HAVE_NATS = True

__all__ = ["JetStreamTransport", "subject_by_key"]

logger = logging.getLogger("surelay.transports")

_STREAM_CACHE = 30.0
"""Seconds a subject's stream, once looked up, is trusted (to tell a subject no stream
captures from a stream that is briefly not answering)."""


def servers_list(servers: str | Sequence[str]) -> list[str]:
    """`servers` as nats-py takes them; `ValueError` if there are none."""
    listed = [servers] if isinstance(servers, str) else list(servers)
    if not listed or not all(isinstance(s, str) and s for s in listed):
        raise ValueError(f"servers must be a NATS URL or a list of them, got {servers!r}")
    return listed


def require_nats(what: str) -> None:
    if not _HAVE_NATS:
        raise ImportError(
            f"{what} needs nats-py, which is not installed: pip install surelay[nats]"
        )


def subject_by_key(prefix: str, partitions: int) -> Callable[[Envelope], str]:
    """A `subject_for` that spreads messages over `prefix.0` ... `prefix.<partitions-1>`
    by key (the same stable hash as surelay's own partitions; no key: `prefix.0`).

    With one consumer per partition subject (`JetStreamSource(..., subjects=
    ["prefix.3"])`, each consumed by one runtime), each key's messages keep their order
    from producer to handler."""
    if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
        raise ValueError(f"partitions must be an int >= 1, got {partitions!r}")

    def subject_for(envelope: Envelope) -> str:
        key = envelope.key
        return f"{prefix}.{0 if key is None else partition_for(key, partitions)}"

    return subject_for


class JetStreamTransport:
    """An async transport that publishes `envelope.payload` to `subject` (or to
    `subject_for(envelope)`) and waits for the stream's ack: `await transport(e)`.

    `servers`: a NATS URL or a list of them (a cluster's). `timeout`: seconds to wait
    for the publish ack. Raises `ValueError` for bad arguments, `ImportError` without
    nats-py.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        subject: str,
        *,
        subject_for: Callable[[Envelope], str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        require_nats("JetStreamTransport")
        self.servers = servers_list(servers)
        if not isinstance(subject, str) or not subject:
            raise ValueError(f"subject must be a non-empty str, got {subject!r}")
        if subject_for is not None and not callable(subject_for):
            raise TypeError("subject_for must be a callable (Envelope) -> str")
        self.timeout = check_timeout(timeout)
        self.subject = subject
        self.subject_for = subject_for
        # the runtime's ack timeout for a call: connecting first and then publishing,
        # each bounded by `timeout`
        self.ack_timeout = 2 * self.timeout + 1.0
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None
        self._closing = False
        """`aclose` is closing the connection: its disconnection is no news."""
        self._streams: dict[str, tuple[str, float]] = {}
        self._acks: _Acks

    async def __call__(self, envelope: Envelope) -> None:
        subject = self.subject if self.subject_for is None else self.subject_for(envelope)
        if not isinstance(subject, str) or not subject:
            raise PermanentError(f"subject_for gave {subject!r}, not a subject")
        js = await self._jetstream()
        headers = {
            # a producer's `Nats-*` headers would steer the stream (roll it up, expect
            # another last sequence, give the message a TTL): the server's, not theirs
            **{k: v for k, v in envelope.headers.items() if not k.lower().startswith("nats-")},
            **current_traceparent(),  # the attempt's span, when the runtime calls
            "Nats-Msg-Id": envelope.idempotency_key,
            "Surelay-Message-Id": envelope.message_id,
            "Surelay-Attempt": str(envelope.attempt),
        }
        if envelope.key is not None:
            headers["Surelay-Key"] = envelope.key
        try:
            answer = await self._acks.request(subject, envelope.payload, headers)
        except _NoResponders as error:
            await self._no_stream(js, subject, error)
        except nats.errors.MaxPayloadError as error:
            raise PermanentError(
                f"{len(envelope.payload)} bytes is over the NATS server's max_payload: {error}"
            ) from error
        except TimeoutError as error:
            raise TransientError(
                f"no publish ack for {subject!r} within {self.timeout}s "
                "(a server down or a stream not answering)"
            ) from error
        except (nats.errors.Error, OSError) as error:
            raise TransientError(f"publishing to {subject!r} failed: {error!r}") from error
        problem = answer.get("error") if isinstance(answer, dict) else None
        if problem is not None:
            raise _api_error(subject, _ApiProblem(problem))

    async def _no_stream(self, js: Any, subject: str, error: Exception) -> None:
        """No responder: permanent if no stream captures `subject`, else transient."""
        now = time.monotonic()
        known = self._streams.get(subject)
        if known is None or now - known[1] > _STREAM_CACHE:
            try:
                stream = await js.find_stream_name_by_subject(subject)
            except nats.js.errors.NotFoundError:
                raise PermanentError(
                    f"no JetStream stream captures subject {subject!r}: add it to a "
                    "stream's subjects, then replay"
                ) from error
            except Exception as lookup:  # JetStream itself is not answering
                raise TransientError(
                    f"no responder for {subject!r}, and JetStream could not be asked "
                    f"which stream captures it: {lookup!r}"
                ) from error
            self._streams[subject] = (stream, now)
            known = self._streams[subject]
        raise TransientError(
            f"stream {known[0]!r} did not answer for {subject!r} (no responders: a "
            "leader election or a server starting)"
        ) from error

    async def _jetstream(self) -> Any:
        """The JetStream context of this loop's connection, connecting first if needed."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or the runtime's loop was replaced
            self._loop, self._client, self._connecting = loop, None, asyncio.Lock()
        assert self._connecting is not None
        if self._client is None:
            async with self._connecting:
                if self._client is None:
                    self._closing = False
                    client = await self._connect()
                    self._acks = await _Acks.start(client, self.timeout)
                    self._client = client
        return self._client.jetstream()

    async def _connect(self) -> Any:
        async def quiet(error: Exception) -> None:
            logger.debug("NATS connection to %s: %r", self.servers, error)

        async def disconnected() -> None:
            if self._closing:  # our own close: nothing was lost
                logger.debug("NATS connection to %s closed", self.servers)
                return
            logger.warning("NATS connection to %s lost; reconnecting", self.servers)

        async def reconnected() -> None:
            logger.info("NATS connection to %s re-established", self.servers)

        try:
            # once connected, nats-py reconnects for as long as the runtime runs; the
            # first connection is bounded here (nats-py would try it for ever too)
            return await asyncio.wait_for(
                nats.connect(
                    servers=self.servers,
                    connect_timeout=min(2.0, self.timeout),
                    reconnect_time_wait=0.25,
                    max_reconnect_attempts=-1,
                    error_cb=quiet,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                ),
                self.timeout,
            )
        except Exception as error:
            raise TransientError(f"cannot connect to NATS at {self.servers}: {error!r}") from error

    async def aclose(self) -> None:
        """Close the connection (on the loop it was made on)."""
        client, self._client = self._client, None
        if client is not None:
            self._closing = True
            self._acks.stop()
            try:
                await asyncio.wait_for(client.close(), 2.0)
            except Exception as error:  # closing for good: say it, go on
                logger.debug("closing the NATS connection: %r", error)


class _NoResponders(Exception):
    """No stream took the publish (NATS answered 503 to its reply subject)."""


class _ApiProblem:
    """A JetStream API error from a publish ack, shaped as nats-py's `APIError`."""

    def __init__(self, problem: dict[str, Any]) -> None:
        self.code = problem.get("code")
        self.err_code = problem.get("err_code")
        self.description = problem.get("description")


class _Acks:
    """Publishes awaiting their JetStream ack, on one reply subscription and one timer
    task: nats-py's request makes a task and a timer per message, which costs more than
    the rest of a publish. Each publish carries a reply subject of its own under this
    connection's inbox; an ack (or a 503: no responders) resolves its future; one not
    answered within `timeout` fails with `TimeoutError`."""

    def __init__(self, client: Any, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._prefix = client.new_inbox() + "."
        self._waiting: dict[str, tuple[asyncio.Future[Any], float]] = {}
        self._count = 0
        self._expiry: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, client: Any, timeout: float) -> _Acks:
        acks = cls(client, timeout)
        await client.subscribe(acks._prefix + "*", cb=acks._answer)
        acks._expiry = asyncio.get_running_loop().create_task(acks._expire())
        return acks

    async def request(self, subject: str, payload: bytes, headers: dict[str, str]) -> Any:
        self._count += 1
        token = str(self._count)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[token] = (future, time.monotonic() + self._timeout)
        try:
            await self._client.publish(
                subject, payload, reply=self._prefix + token, headers=headers
            )
            return await future
        finally:
            self._waiting.pop(token, None)

    async def _answer(self, message: Any) -> None:
        waiting = self._waiting.get(message.subject[len(self._prefix) :])
        if waiting is None or waiting[0].done():
            return
        future = waiting[0]
        headers = message.headers
        if headers and headers.get("Status") == "503":
            future.set_exception(_NoResponders("no responders"))
            return
        try:
            future.set_result(json.loads(message.data) if message.data else {})
        except ValueError as error:
            future.set_exception(TransientError(f"an ack that is not JSON: {error}"))

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(min(0.1, self._timeout / 4))
            now = time.monotonic()
            for future, deadline in list(self._waiting.values()):
                if deadline > now:
                    break  # one timeout for all: in deadline order already
                if not future.done():
                    future.set_exception(TimeoutError())

    def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()


def _api_error(subject: str, error: Any) -> Exception:
    """A JetStream API error as surelay's outcome: 4xx permanent, others transient."""
    code = getattr(error, "code", None)
    text = f"JetStream refused the message for {subject!r}: {error.description or error!r}"
    if isinstance(code, int) and 400 <= code < 500:  # e.g. 10054: over max_msg_size
        return PermanentError(f"{text} (JetStream error {error.err_code})")
    return TransientError(f"{text} (JetStream code {code}, error {error.err_code})")
