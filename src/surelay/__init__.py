"""surelay: an embeddable, OTP-style supervised actor runtime that delivers messages reliably.

The public names, re-exported here; supervision lives in `surelay.supervision`,
persistence in `surelay.storage`, transports in `surelay.transports`. How the parts fit:
docs/architecture.md.
"""

from surelay.config import (
    BreakerPolicy,
    Guarantee,
    PressurePolicy,
    Rate,
    RetryPolicy,
    RuntimeConfig,
)
from surelay.envelope import Envelope, Priority
from surelay.errors import (
    InvalidMessage,
    Overloaded,
    PermanentError,
    RuntimeClosed,
    StorageError,
    StorageFull,
    SurelayError,
    TransientError,
    UnknownTransport,
)
from surelay.operations.message_status import MessageStatus
from surelay.receipts import Outcome, Receipt
from surelay.replay_report import ReplayReport
from surelay.runtime import Runtime, RuntimeStats
from surelay.storage.records import DeadLetter

__version__ = "0.1.0"

__all__ = [
    "BreakerPolicy",
    "DeadLetter",
    "Envelope",
    "Guarantee",
    "InvalidMessage",
    "MessageStatus",
    "Outcome",
    "Overloaded",
    "PermanentError",
    "PressurePolicy",
    "Priority",
    "Rate",
    "Receipt",
    "ReplayReport",
    "RetryPolicy",
    "Runtime",
    "RuntimeClosed",
    "RuntimeConfig",
    "RuntimeStats",
    "StorageError",
    "StorageFull",
    "SurelayError",
    "TransientError",
    "UnknownTransport",
    "__version__",
]
