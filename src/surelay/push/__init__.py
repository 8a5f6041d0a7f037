"""Push to clients: store-and-forward delivery to a recipient's devices.

`Runtime.open(path, transports=..., push=PushConfig(secret=...))` gives `rt.push`, the
gateway: `send` (and `asend`) puts a message in the recipient's mailbox on disk with its
sequence number, `status` answers what became of it from any process on the directory,
and `issue_token` signs the connection tokens clients present. The wire protocol is in
`surelay.push.frames`.
"""

from surelay.errors import MailboxFull, Overloaded
from surelay.push.config import PushConfig
from surelay.push.gateway import Gateway, PushReceipt
from surelay.push.tokens import Grant, InvalidToken
from surelay.storage.mailbox import PushStatus

__all__ = [
    "Gateway",
    "Grant",
    "InvalidToken",
    "MailboxFull",
    "Overloaded",
    "PushConfig",
    "PushReceipt",
    "PushStatus",
]
