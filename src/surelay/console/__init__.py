"""`surelay console`: a local web page over a data directory (every slot of it).

Overview, dead letters (filter, page, look at one) and the operator's actions (replay a
canary, replay a selection at a rate with live progress, archive, purge), over the same
store access and replay requests as the `surelay` CLI, so it works whether or not a
runtime is running there. Server-rendered HTML (Starlette and Jinja2, the `console`
extra); no front-end build step.

Safety: it binds 127.0.0.1 unless told otherwise, and refuses another address without
an access token (16 characters or more); every action is a POST carrying a per-process
form secret and refused when the browser says it comes from another site or another
origin (scheme, host and port); `read_only` hides and refuses actions; trace links are
http(s) only.
"""

from surelay.console.app import ConsoleSettings, create_app

__all__ = ["ConsoleSettings", "create_app"]
