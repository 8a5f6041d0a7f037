"""Sources: where inbound messages come from (`rt.consume`).

A source is pulled by a consumer of the runtime's (`surelay.actors.consumer`) on an
event loop of the consumer's own: `await source.open()`, then `await source.fetch(n,
timeout)` for batches of `Inbound` messages, each acknowledged (`await message.ack()`)
only once it is durable in the outbox, and `await source.close()`.

Built in: `JetStreamSource` (a NATS JetStream durable pull consumer; the `nats` extra)
and `RabbitMQSource` (a RabbitMQ queue with manual acks; the `rabbitmq` extra).
"""

from typing import TYPE_CHECKING, Any

from surelay.sources.inbound import Inbound, Source

if TYPE_CHECKING:
    from surelay.sources.jetstream import JetStreamSource
    from surelay.sources.rabbitmq import RabbitMQSource

__all__ = ["Inbound", "JetStreamSource", "RabbitMQSource", "Source"]


def __getattr__(name: str) -> Any:
    # Imported on first use: nats-py and aiormq (and all they bring) stay out of a host
    # that does not consume from them.
    if name == "JetStreamSource":
        from surelay.sources.jetstream import JetStreamSource  # noqa: PLC0415

        return JetStreamSource
    if name == "RabbitMQSource":
        from surelay.sources.rabbitmq import RabbitMQSource  # noqa: PLC0415

        return RabbitMQSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
