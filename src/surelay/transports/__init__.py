"""Transports: how a message leaves surelay.

A transport is any callable `(Envelope) -> None`: returning means delivered; raising
`PermanentError` dead-letters at once; raising `TransientError` (or anything else) is
retried by the retry policy.
"""

from surelay.transports.http import HttpTransport

__all__ = ["HttpTransport"]
