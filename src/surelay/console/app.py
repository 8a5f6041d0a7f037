"""The console's web app (see `surelay.console`): routes, safety checks, templates."""

from __future__ import annotations

import calendar
import contextlib
import hmac
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from surelay.ages import age, stamp
from surelay.console.history import SERIES, History, sparkline
from surelay.console.queries import (
    PAGE,
    Filters,
    headers_of,
    overview,
    page_of,
    payload_views,
    replay_history,
)
from surelay.envelope import MAX_KEY_CHARS
from surelay.errors import StorageError
from surelay.operations.dead_letters import (
    TAKES,
    archive,
    cancel_replay,
    purge,
    purged_by,
    record_replay,
)
from surelay.operations.message_status import message_status
from surelay.replay_report import ReplayReport
from surelay.storage.dead_letters import MAX_LIMIT
from surelay.storage.records import DEAD_LETTER_STATUSES, REASON_CLASSES
from surelay.storage.replay_requests import request_filters
from surelay.storage.slots import holders
from surelay.storage.store import Store

__all__ = ["MIN_TOKEN", "ConsoleSettings", "create_app", "token_problem", "trace_url_problem"]

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
COOKIE = "surelay_console"
ACTIONS = ("replay", "archive", "purge")
MAX_SEARCH = MAX_KEY_CHARS
"""Longest message id or idempotency key searched for (none longer can be sent)."""
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


PUSH_LOOK = 10_000
"""Mailboxes the push page looks at (a directory with more says so)."""
PUSH_ROWS = 50
"""Recipients it lists, oldest waiting first."""


@dataclass
class ConsoleSettings:
    """How the console runs. `token`: required on every request when set (a `?token=`
    query sets a cookie); `trace_url`: a link template with `{trace_id}`, e.g. a Jaeger
    or Tempo URL; `read_only`: no actions."""

    path: Path
    token: str | None = None
    read_only: bool = False
    trace_url: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "[::1]")
    """Host names a request may name (its `Host` header, and an action's `Origin`): a
    page of another site that made its name resolve to 127.0.0.1 (DNS rebinding) is
    turned away. With a token, any (the token is what guards)."""

    def __post_init__(self) -> None:
        if self.token is not None and (problem := token_problem(self.token)):
            raise ValueError(f"token {problem}")
        if self.trace_url is not None and (problem := trace_url_problem(self.trace_url)):
            raise ValueError(f"trace_url {problem}")


MIN_TOKEN = 16
"""Characters an access token needs at least: a short one can be guessed."""


def token_problem(token: str) -> str | None:
    """What is wrong with `token` as an access token (None: nothing). Never quotes it."""
    if len(token) < MIN_TOKEN:
        return (
            f"must be at least {MIN_TOKEN} characters, got {len(token)}: a short one can be "
            "guessed (make one with: python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return None


def trace_url_problem(template: str) -> str | None:
    """What is wrong with `template` as a trace link (None: nothing): it must hold
    `{trace_id}` and be an http or https URL with a host, so that a link on a record page
    cannot run script (`javascript:`) or carry data (`data:`)."""
    if "{trace_id}" not in template:
        return f"must contain {{trace_id}}, got {template!r}"
    if template != template.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in template):
        return f"must not hold spaces around it or control characters, got {template!r}"
    link = urlsplit(template.replace("{trace_id}", "0" * 32))
    if link.scheme.lower() not in ("http", "https") or not link.hostname:
        return f"must be an http:// or https:// URL with a host, got {template!r}"
    return None


class BadRequest(Exception):
    """A query parameter that is not what it should be; the text says which and why."""


def create_app(settings: ConsoleSettings, store: Store | None = None) -> Starlette:
    """The console over `settings.path` (opened here unless `store` is given)."""
    console = _Console(settings, store)
    routes = [
        Route("/", console.home),
        Route("/dead-letters", console.dead_letters),
        Route("/messages", console.message),
        Route("/push", console.push),
        Route("/dead-letters/{dead_letter_id}", console.record),
        Route("/confirm/{action:str}", console.confirm),
        Route("/actions/{action:str}", console.act, methods=["POST"]),
        Route("/replays/{request_id}", console.replay_progress),
        Route("/replays/{request_id}/cancel", console.cancel_replay, methods=["POST"]),
        Route("/favicon.svg", favicon),
        Route("/favicon.ico", favicon),  # where browsers look when a page names none
    ]
    return Starlette(
        routes=routes,
        lifespan=console.lifespan,
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=console.guard)],
    )


FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#1d2330"/>'
    '<path d="M4 8.5l2.5 2.5L12 5" stroke="#cfe0ff" stroke-width="2" fill="none"/></svg>'
)
"""The console's icon: a tick on the header's colour."""


async def favicon(_request: Request) -> Response:
    return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


class _Console:
    """The pages and actions over one data directory."""

    def __init__(self, settings: ConsoleSettings, store: Store | None) -> None:
        self.settings = settings
        self._given = store
        self._opened: Store | None = None
        self.history = History(lambda: _statuses(self.store))

    @property
    def store(self) -> Store:
        store = self._given or self._opened
        if store is None:
            raise RuntimeError("the console's store is not open")
        return store

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        if self._given is None:
            self._opened = Store.open(
                self.settings.path, create=False, readonly=self.settings.read_only
            )
        self.history.start()
        try:
            yield
        finally:
            self.history.stop()
            if self._opened is not None:
                self._opened.close()
                self._opened = None

    async def guard(self, request: Request, call_next: Any) -> Response:
        """The host name (without a token), the token (with one) on every request;
        safety headers on every answer."""
        settings = self.settings
        if settings.token is None and _host_name(request.headers.get("host", "")) not in [
            _host_name(h) for h in settings.hosts
        ]:
            return HTMLResponse(
                "<h1>400</h1><p>This console answers to its own address only (127.0.0.1 or "
                "localhost), not to the host name this request names.</p>",
                status_code=400,
            )
        if settings.token is not None:
            in_query = request.query_params.get("token")
            given = (
                in_query
                or request.cookies.get(COOKIE)
                or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            )
            if not given or not _same(given, settings.token):
                return HTMLResponse(
                    "<h1>401</h1><p>This console needs its access token: open it with "
                    "<code>?token=...</code> (the token it was started with).</p>",
                    status_code=401,
                )
            if in_query:  # into a cookie, and out of the address bar and history
                rest = urlencode(
                    [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                )
                redirect = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), 303)
                redirect.set_cookie(COOKIE, settings.token, httponly=True, samesite="strict")
                return redirect
        response: Response = await call_next(request)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"  # no-referrer makes Origin "null"
        return response

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        context.update(
            request=request,
            settings=self.settings,
            path=str(self.settings.path),
            now=time.time(),
            ago=_ago,
            when=_when,
            query=urlencode,
        )
        return TEMPLATES.TemplateResponse(request, template, context, status_code=status)

    def error(self, request: Request, status: int, message: str) -> Response:
        return self.page(request, "error.html", status=status, status_code=status, message=message)

    async def home(self, request: Request) -> Response:
        data = overview(self.store)
        rates = self.history.rates()
        charts = {
            name: {
                "points": sparkline(rates[name][-300:]),
                "now": rates[name][-1] if rates[name] else 0.0,
                "peak": max(rates[name][-300:], default=0.0),
            }
            for name in SERIES
        }
        return self.page(request, "overview.html", data=data, charts=charts)

    async def dead_letters(self, request: Request) -> Response:
        try:
            filters = _filters(request.query_params)
            after = request.query_params.get("after") or None
            limit = _int(request.query_params, "limit", PAGE, 1, MAX_LIMIT)
        except BadRequest as bad:
            return self.error(request, 400, str(bad))
        records = page_of(self.store, filters, after, limit)
        following = records[-1].id if len(records) == limit else None
        return self.page(
            request,
            "dead_letters.html",
            records=records,
            filters=filters,
            following=following,
            after=after,
            limit=limit,
            statuses=DEAD_LETTER_STATUSES,
            reasons=REASON_CLASSES,
        )

    async def message(self, request: Request) -> Response:
        """A message's status, searched by its id or (with `by=idempotency_key`) the
        idempotency key it was sent with."""
        query = request.query_params.get("q", "").strip()
        by_key = request.query_params.get("by") == "idempotency_key"
        found = None
        if query:
            if len(query) > MAX_SEARCH:
                return self.error(request, 400, f"q is over {MAX_SEARCH} characters")
            found = message_status(
                self.store,
                None if by_key else query,
                query if by_key else None,
                now=time.time(),
                in_flight=lambda _message_id: False,  # (known only to its own process)
            )
        return self.page(request, "message.html", search=query, by_key=by_key, found=found)

    async def push(self, request: Request) -> Response:
        """Push to clients: devices online, what waits for them (oldest first), and a
        pushed message's status by its msg_id."""
        query = request.query_params.get("q", "").strip()
        if len(query) > MAX_SEARCH:
            return self.error(request, 400, f"q is over {MAX_SEARCH} characters")
        mailboxes = self.store.mailboxes
        with self.store.read() as txn:
            found = mailboxes.status(txn, query) if query else None
            waiting, more = mailboxes.waiting(txn, limit=PUSH_LOOK)
            online = mailboxes.online(txn)
            pending = mailboxes.pending_total(txn)
        return self.page(
            request,
            "push.html",
            search=query,
            found=found,
            waiting=waiting[:PUSH_ROWS],
            more=more,
            online=online,
            pending=pending,
            look=PUSH_LOOK,
        )

    async def record(self, request: Request) -> Response:
        dead_letter_id = request.path_params["dead_letter_id"]
        with self.store.read() as txn:
            found = self.store.dead_letters.get(txn, dead_letter_id)
        if found is None:
            return self.error(
                request, 404, f"no dead letter {dead_letter_id!r} in {self.settings.path}"
            )
        trace_link = None
        if found.trace_id and self.settings.trace_url:
            trace_link = self.settings.trace_url.replace(
                "{trace_id}", quote(found.trace_id, safe="")
            )
        return self.page(
            request,
            "record.html",
            record=found,
            payload=payload_views(found.payload),
            headers=headers_of(found),
            trace_link=trace_link,
            history=replay_history(self.store, found),
        )

    async def confirm(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ACTIONS:
            return self.error(request, 404, f"no action {action!r}: {', '.join(ACTIONS)}")
        if self.settings.read_only:
            return self.error(request, 403, "this console is read-only: no actions")
        try:
            chosen = _chosen(request.query_params)
            filters = _filters(request.query_params, purge=action == "purge")
            rate = _rate(request.query_params)
            older_than = _duration(request.query_params.get("older_than"), "older_than")
        except BadRequest as bad:
            return self.error(request, 400, str(bad))
        if action == "replay" and not chosen and filters.status != "dead":
            return self.error(request, 400, "a replay takes dead records: filter with status dead")
        touched = _touched(self.store, action, chosen, filters, older_than)
        return self.page(
            request,
            "confirm.html",
            action=action,
            ids=chosen,
            filters=filters,
            rate=rate,
            older_than=older_than,
            touched=touched,
            running=holders(self.settings.path),
        )

    async def act(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ACTIONS:
            return self.error(request, 404, f"no action {action!r}: {', '.join(ACTIONS)}")
        form = await request.form()
        refused = _refuse_action(request, form, self.settings)
        if refused is not None:
            return self.error(request, 403, refused)
        fields = {k: str(v) for k, v in form.multi_items() if k != "id"}
        chosen = tuple(str(v) for v in form.getlist("id"))
        try:
            filters = _filters(fields, purge=action == "purge")
            rate = _rate(fields)
            older_than = _duration(fields.get("older_than"), "older_than")
        except BadRequest as bad:
            return self.error(request, 400, str(bad))
        try:
            return self._act(request, action, chosen, filters, rate=rate, older_than=older_than)
        except StorageError as failed:  # a read-only filesystem, a full map: say so
            return self.error(request, 503, f"{action} failed: {failed}")

    def _act(
        self,
        request: Request,
        action: str,
        chosen: tuple[str, ...],
        filters: Filters,
        *,
        rate: float | None,
        older_than: float | None,
    ) -> Response:
        target = self.store
        if action == "replay" and not chosen and filters.status != "dead":
            return self.error(request, 400, "a replay takes dead records: filter with status dead")
        if action == "purge" and filters.status == "replaying":
            return self.error(request, 400, "replaying records cannot be purged")
        if action == "replay":
            request_id = _record_replay(target, chosen, filters, rate)
            return RedirectResponse(f"/replays/{request_id}", status_code=303)
        if action == "archive":
            ids = list(chosen) or [r.id for r in _matching(target, filters)]
            changed = archive(target, ids)
            return self.page(request, "done.html", message=f"archived {changed} dead letter(s)")
        status = filters.status or "archived"
        now = time.time()
        purged = purge(target, status=status, older_than=older_than, now=now)
        return self.page(request, "done.html", message=f"purged {purged} {status} dead letter(s)")

    async def replay_progress(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        with self.store.read() as txn:
            found = self.store.replay_requests.get(txn, request_id)
        if found is None:
            return self.error(request, 404, f"no replay request {request_id!r}")
        report = ReplayReport.from_progress(found.progress, request_id)
        return self.page(
            request,
            "replay.html",
            replay=found,
            report=report,
            running=holders(self.settings.path),
        )

    async def cancel_replay(self, request: Request) -> Response:
        """Cancel a pending replay request (a POST with the form's secret, as every
        action), then show it again."""
        request_id = request.path_params["request_id"]
        form = await request.form()
        refused = _refuse_action(request, form, self.settings)
        if refused is not None:
            return self.error(request, 403, refused)
        try:
            cancel_replay(self.store, request_id, now=time.time())
        except LookupError as missing:
            return self.error(request, 404, str(missing))
        except ValueError as taken:
            return self.error(request, 409, str(taken))
        except StorageError as failed:
            return self.error(request, 503, f"cancel failed: {failed}")
        return RedirectResponse(f"/replays/{request_id}", status_code=303)


# -- helpers ---------------------------------------------------------------------------------


def _statuses(store: Store) -> Mapping[int, Mapping[str, Any]]:
    with store.read() as txn:
        return store.status.all(txn)


def _refuse_action(request: Request, form: Any, settings: ConsoleSettings) -> str | None:
    """Why this POST may not act (None: it may)."""
    if settings.read_only:
        return "this console is read-only: no actions"
    sent = str(form.get("csrf", ""))
    if not _same(sent, settings.csrf):
        return "the form's secret is missing or wrong: actions come from this console's pages"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"a request from another site ({site}) may not act here"
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, request):
        return f"a request from {origin} may not act here"
    return None


def _same_origin(origin: str, request: Request) -> bool:
    """Whether `origin` is this console's own: scheme, host and port as the request's
    `Host` names them (the guard has checked that host). Another port of 127.0.0.1 is
    another site, which may run anything."""
    scheme, sep, authority = origin.strip().lower().partition("://")
    if not sep or "/" in authority:  # also "null", which sandboxed pages send
        return False
    own = request.url.scheme
    return (scheme, *_host_port(authority, scheme)) == (
        own,
        *_host_port(request.headers.get("host", ""), own),
    )


def _host_port(host: str, scheme: str) -> tuple[str, str]:
    """`host[:port]` as (name, port), the scheme's default port when none is given."""
    name = _host_name(host)
    port = host.strip().lower()[len(name) :].removeprefix(":")
    return name, port or ("443" if scheme == "https" else "80")


def _host_name(host: str) -> str:
    """`host[:port]` without the port (IPv6 in brackets kept whole), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _filters(params: Mapping[str, str], *, purge: bool = False) -> Filters:
    status = params.get("status") or ("archived" if purge else "dead")
    if status != "any" and status not in DEAD_LETTER_STATUSES:
        raise BadRequest(
            f"status must be one of {', '.join(DEAD_LETTER_STATUSES)} or any, got {status!r}"
        )
    reason = params.get("reason_class") or None
    if reason is not None and reason not in REASON_CLASSES:
        raise BadRequest(f"reason_class must be one of {', '.join(REASON_CLASSES)}, got {reason!r}")
    return Filters(
        status=None if status == "any" else status,
        reason_class=reason,
        key=params.get("key") or None,
        transport=params.get("transport") or None,
        since=_time(params.get("since"), "since"),
        until=_time(params.get("until"), "until"),
    )


def _time(value: str | None, name: str) -> float | None:
    """A time as UTC `YYYY-MM-DDTHH:MM[:SS]`, or an age like `15m` (that long ago)."""
    if not value:
        return None
    value = value.strip()
    age = _UNITS.get(value[-1:].lower())
    if age is not None and re.fullmatch(r"\d+(\.\d+)?", value[:-1]):
        seconds = float(value[:-1]) * age
        if seconds > 100 * 365 * 86400:
            raise BadRequest(f"{name} reaches back more than a hundred years: {value!r}")
        return time.time() - seconds
    for shape in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(value, shape)))
        except ValueError:
            continue
    raise BadRequest(
        f"{name} must be a UTC time like 2026-12-01T03:00 or an age like 15m, 2h, 7d; got {value!r}"
    )


def _duration(value: str | None, name: str) -> float | None:
    if not value:
        return None
    scale = _UNITS.get(value[-1:].lower())
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise BadRequest(f"{name} must be a duration like 90s, 15m, 7d; got {value!r}") from None
    if not 0 <= seconds < float("inf"):
        raise BadRequest(f"{name} must be a finite duration >= 0, got {value!r}")
    return seconds


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if not raw:
        return default
    # At most as many digits as `high` before `int()`: Python refuses to convert more than
    # 4,300, and nothing longer can be in range anyway.
    if len(raw) > len(str(high)) or not re.fullmatch(r"\d+", raw) or not low <= int(raw) <= high:
        shown = raw if len(raw) <= 40 else f"{raw[:20]}... ({len(raw)} characters)"
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, got {shown!r}")
    return int(raw)


def _rate(params: Mapping[str, str]) -> float | None:
    raw = params.get("rate")
    if not raw:
        return None
    try:
        rate = float(raw)
    except ValueError:
        raise BadRequest(f"rate must be records per second (a number > 0), got {raw!r}") from None
    if not 0 < rate < float("inf"):
        raise BadRequest(f"rate must be records per second (a number > 0), got {raw!r}")
    return rate


def _chosen(params: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in params.getlist("id") if str(v))


def _matching(store: Store, filters: Filters) -> list[Any]:
    out = []
    after = None
    while True:
        batch = page_of(store, filters, after, MAX_LIMIT)
        out.extend(batch)
        if len(batch) < MAX_LIMIT:
            return out
        after = batch[-1].id


def _touched(
    store: Store,
    action: str,
    ids: tuple[str, ...],
    filters: Filters,
    older_than: float | None = None,
) -> dict[str, Any]:
    """What an action would touch: how many records, and the first few."""
    if action == "purge":
        status = filters.status or "archived"
        if older_than is None:
            with store.read() as txn:
                count = store.dead_letters.count(txn, status)
            return {"count": count, "sample": [], "missing": []}
        old = purged_by(store, status=status, older_than=older_than, now=time.time())
        return {"count": len(old), "sample": old[:10], "missing": []}
    takes = TAKES[action]
    if ids:
        with store.read() as txn:
            found = [store.dead_letters.get(txn, i) for i in ids]
        taken = [r for r in found if r is not None and r.status in takes]
        return {
            "count": len(taken),
            "sample": taken[:10],
            "missing": [i for i, r in zip(ids, found, strict=True) if r is None],
        }
    matching = [r for r in _matching(store, filters) if r.status in takes]
    return {"count": len(matching), "sample": matching[:10], "missing": []}


def _record_replay(store: Store, ids: tuple[str, ...], filters: Filters, rate: float | None) -> str:
    """Store a replay request as the CLI does (a runtime on the directory carries it out)."""
    now = time.time()
    if ids or not filters.selects_by_index():
        selected: tuple[str, ...] | None = ids or tuple(r.id for r in _matching(store, filters))
        chosen_filters: Mapping[str, str] = {}
    else:
        selected = None
        chosen_filters = request_filters(filters.reason_class, filters.key, filters.transport)
    return record_replay(store, ids=selected, filters=chosen_filters, rate=rate, now=now).id


def _ago(at: float | None) -> str:
    return "-" if at is None else age(at)


def _when(at: float | None) -> str:
    return "-" if at is None else stamp(at)
