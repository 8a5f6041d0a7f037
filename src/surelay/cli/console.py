"""`surelay console`: serve the console (`surelay.console`) for a data directory."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click
from rich.text import Text

from surelay.cli.common import err_console, path_option

__all__ = ["console"]


def loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command(help="A local web page over a data directory: overview, dead letters, replay.")
@path_option
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True)
@click.option(
    "--token",
    envvar="SURELAY_CONSOLE_TOKEN",
    help="access token every request must carry, 16 characters or more (required off "
    "loopback; or SURELAY_CONSOLE_TOKEN)",
)
@click.option("--read-only", is_flag=True, help="hide and refuse the actions")
@click.option(
    "--trace-url",
    metavar="TEMPLATE",
    help="http(s) link for trace ids, {trace_id} replaced "
    "(e.g. http://jaeger:16686/trace/{trace_id})",
)
def console(
    *, path: Path, host: str, port: int, token: str | None, read_only: bool, trace_url: str | None
) -> None:
    if not path.is_dir() or not (path / "data.mdb").exists():
        raise click.BadParameter(
            f"{path} is not a surelay data directory (no data.mdb in it)", param_hint="--path"
        )
    if not loopback(host) and not token:
        raise click.UsageError(
            f"the console refuses to listen on {host} without an access token: anyone who "
            "can reach it could replay and purge. Give --token (or SURELAY_CONSOLE_TOKEN), "
            "or listen on 127.0.0.1"
        )
    try:
        import uvicorn  # noqa: PLC0415  # the console's extra, loaded only here

        from surelay.console import ConsoleSettings, create_app  # noqa: PLC0415
        from surelay.console.app import token_problem, trace_url_problem  # noqa: PLC0415
    except ImportError as error:
        raise click.ClickException(
            f"the console needs its extra ({error.name} is missing): pip install 'surelay[console]'"
        ) from error
    if token is not None and (problem := token_problem(token)):
        raise click.BadParameter(problem, param_hint="--token / SURELAY_CONSOLE_TOKEN")
    if trace_url is not None and (problem := trace_url_problem(trace_url)):
        raise click.BadParameter(problem, param_hint="--trace-url")
    settings = ConsoleSettings(path, token=token, read_only=read_only, trace_url=trace_url)
    settings.hosts = (*settings.hosts, host)
    url = f"http://{host}:{port}/"
    # The token itself is never printed: terminals are logged, shared and scrolled back.
    how = f"; a token is set: open {url}?token=<the token> once" if token else ""
    read = " (read-only)" if read_only else ""
    err_console.print(Text(f"surelay console for {path}: {url}{read}{how}"))
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
