"""Erlang/OTP supervision trees on pykka, with refs and mailboxes that survive restarts.

```python
from surelay.supervision import Actor, ChildSpec, Supervisor

class Echo(Actor):
    def on_receive(self, message):
        return message

sup = Supervisor.start([ChildSpec("echo", Echo)], strategy="one_for_one")
echo = sup.child("echo")
assert echo.ask("hi", timeout=1) == "hi"
sup.stop()
```
"""

from surelay.supervision._actor import NO_MESSAGE, Actor, CrashReport
from surelay.supervision._ref import Ref, SupervisorRef
from surelay.supervision._spec import ChildInfo, ChildSpec
from surelay.supervision._supervisor import (
    ChildStartError,
    RestartIntensityExceeded,
    Supervisor,
)

__all__ = [
    "NO_MESSAGE",
    "Actor",
    "ChildInfo",
    "ChildSpec",
    "ChildStartError",
    "CrashReport",
    "Ref",
    "RestartIntensityExceeded",
    "Supervisor",
    "SupervisorRef",
]
