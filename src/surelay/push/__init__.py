"""Push to clients: store-and-forward delivery to a recipient's devices."""

from surelay.errors import MailboxFull, Overloaded
from surelay.push.config import PushConfig
from surelay.push.tokens import Grant, InvalidToken
from surelay.storage.mailbox import PushStatus

__all__ = ["Grant", "InvalidToken", "MailboxFull", "Overloaded", "PushConfig", "PushStatus"]
