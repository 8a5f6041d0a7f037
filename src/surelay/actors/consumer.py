"""The SourceConsumer: pulls one source (`rt.consume`) into the runtime.

The actor is a shell: it owns a thread running an event loop of its own (sources are
asyncio clients, as nats-py is), started with the actor and stopped with it. On that
loop the pull runs: while `Intake.room()` admits, fetch a batch, sort it through the
inbox, write the fresh messages durably, then acknowledge the batch to the source and
hand the messages to their senders (`surelay.ingress.intake`).

A source that cannot be reached or opened (a broker down, a stream missing) is tried
again with a growing pause (up to `MAX_PAUSE`); its state and last error show in
`rt.health()["sources"]`. It never crashes the actor: a source outage must not escalate
through the tree. `Pause` stops pulling (close() asks it first, so a closing runtime
takes nothing new); messages fetched but not yet written are given back to the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.supervision import Actor

if TYPE_CHECKING:
    from surelay.ingress.intake import Intake, Taken
    from surelay.sources.inbound import Inbound, Source

__all__ = ["BATCH", "ConsumerState", "Pause", "SourceConsumer"]

logger = logging.getLogger("surelay.actors")

BATCH = 1000
"""Messages fetched at once, at most."""
FETCH_WAIT = 0.5
"""Seconds a fetch waits for a first message (so a pause is heard within this)."""
HOLD = 0.005
"""Seconds between looks at the room for more while there is none."""
WRITES = 4
"""Batches whose writes may be under way at once."""
MAX_PAUSE = 5.0
"""The longest pause between attempts to reach a source."""


@dataclass(frozen=True, slots=True)
class Pause:
    """Ask: stop pulling within `timeout` seconds; answers whether it stopped."""

    timeout: float = 2.0


class ConsumerState:
    """What the consumer shows (kept by the runtime across restarts of the actor)."""

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.connected = False
        self.taken = 0
        self.duplicates = 0
        self.last_error: str | None = None
        self.paused = False

    def health(self) -> dict[str, Any]:
        return {
            "ok": self.connected or self.paused,
            "source": self.description,
            "connected": self.connected,
            "paused": self.paused,
            "taken": self.taken,
            "duplicates": self.duplicates,
            "last_error": self.last_error,
        }


class SourceConsumer(Actor):
    def __init__(self, source: Source, intake: Intake, state: ConsumerState) -> None:
        super().__init__()
        self._source = source
        self._intake = intake
        self._state = state
        self._puller: threading.Thread | None = None
        self._pull_loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()

    def on_start(self) -> None:
        if self._state.paused:
            return
        self._puller = threading.Thread(
            target=self._serve, name=f"surelay-source-{self._state.name}", daemon=True
        )
        self._puller.start()
        self._started.wait(5.0)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Pause):
            self._state.paused = True
            return self._halt(message.timeout)
        return None

    def on_stop(self) -> None:
        self._halt(2.0)

    def on_failure(self, *_exc_info: Any) -> None:
        self._halt(2.0)

    def _halt(self, timeout: float) -> bool:
        loop, stop, thread = self._pull_loop, self._stopping, self._puller
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                loop.call_soon_threadsafe(stop.set)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    # -- on the consumer's own thread ----------------------------------------------------

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # a bug of ours: say it; the actor stays, the source waits
            logger.exception("consumer %r stopped by an error", self._state.name)

    async def _main(self) -> None:
        self._pull_loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._started.set()
        state = self._state
        pause = 0.1
        while not self._stopping.is_set():
            try:
                await self._source.open()
                state.connected, state.last_error, pause = True, None, 0.1
                logger.info("consumer %r: pulling %s", state.name, self._source.description)
                await self._pull()
            except Exception as error:
                state.connected = False
                if _episode(state.last_error) != _episode(repr(error)):
                    logger.warning(
                        "consumer %r: %s failed (%r); trying again",
                        state.name,
                        self._source.description,
                        error,
                    )
                    logger.debug("consumer %r failed", state.name, exc_info=True)
                state.last_error = repr(error)
                await self._wait(pause)
                pause = min(MAX_PAUSE, pause * 2)
            finally:
                state.connected = False
                await self._source.close()

    async def _wait(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _pull(self) -> None:
        """Fetch while there is room; each batch's write is awaited by a task of its own
        (up to `WRITES` at once), so the next fetch overlaps the last one's fsync."""
        assert self._stopping is not None
        writes: deque[asyncio.Task[None]] = deque()
        try:
            while not self._stopping.is_set():
                while writes and writes[0].done():
                    writes.popleft().result()  # a failed write ends this pull
                self._state.connected = bool(getattr(self._source, "connected", True))
                room = self._intake.room()
                if room <= 0 or len(writes) >= WRITES:
                    # full: the stream keeps the messages until there is room
                    if writes:
                        await asyncio.wait([writes[0]], timeout=HOLD)
                    else:
                        await self._wait(HOLD)
                    continue
                batch = await self._source.fetch(min(room, BATCH), FETCH_WAIT)
                if not batch:
                    continue
                try:
                    taken = self._intake.take(batch)
                except Exception:
                    await _each(batch, "nak")  # nothing taken: the source delivers them again
                    raise
                self._state.duplicates += len(taken.duplicates)
                previous = writes[-1] if writes else None
                writes.append(asyncio.create_task(self._complete(taken, previous)))
        finally:
            # the writes under way end either way: their messages are acked or given back
            if writes:
                await asyncio.wait(writes)

    async def _complete(self, taken: Taken, previous: asyncio.Task[None] | None) -> None:
        """Acknowledge a batch's duplicates (those the inbox holds durably); once its
        write is durable (and the batch before it handed over, so each key keeps its
        order), hand it to the senders and acknowledge it to the source. Copies of a
        message whose write was under way are settled last: acknowledged if the inbox
        holds it by then, else given back (a source such as RabbitMQ never delivers an
        unsettled message again while the consumer lives)."""
        intake = self._intake
        await _each(taken.duplicates, "ack")
        if taken.durable is not None:
            try:
                entries = await asyncio.wrap_future(taken.durable)
            except BaseException as error:
                intake.abort(taken, error)
                await _each(taken.fresh + taken.copies, "nak")
                raise
            if previous is not None:
                await asyncio.wait([previous])
            intake.finish(taken, entries)
            self._state.taken += len(taken.fresh)
            # a lost ack costs a redelivery, which the inbox drops: the write is durable
            await _each(taken.fresh, "ack")
        elif previous is not None:  # each batch ends after the one before: a chain
            await asyncio.wait([previous])
        if taken.copies:
            held, not_held = intake.held(taken.copies)
            self._state.duplicates += len(held)
            await _each(held, "ack")
            await _each(not_held, "nak")


async def _each(messages: list[Inbound], verb: str) -> None:
    for message in messages:
        try:
            await (message.ack() if verb == "ack" else message.nak())
        except Exception as error:  # the source redelivers; the inbox decides then
            logger.debug("could not %s message %s: %r", verb, message.message_id, error)


def _episode(error: str | None) -> str | None:
    """What makes a failure news: a full store is one episode however its figures move
    (each retry's refusal names the bytes it lacked), anything else its whole text."""
    if error is not None and error.startswith("StorageFull("):
        return "StorageFull"
    return error
