"""`surelay console`: serve the console (`surelay.console`) for a data directory."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

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
    help="access token every request must carry (required off loopback; or SURELAY_CONSOLE_TOKEN)",
)
@click.option("--read-only", is_flag=True, help="hide and refuse the actions")
@click.option(
    "--trace-url",
    metavar="TEMPLATE",
    help="link for trace ids, {trace_id} replaced (e.g. http://jaeger:16686/trace/{trace_id})",
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
    if trace_url is not None and "{trace_id}" not in trace_url:
        raise click.BadParameter("must contain {trace_id}", param_hint="--trace-url")
    try:
        import uvicorn  # noqa: PLC0415  # the console's extra, loaded only here

        from surelay.console import ConsoleSettings, create_app  # noqa: PLC0415
    except ImportError as error:
        raise click.ClickException(
            f"the console needs its extra ({error.name} is missing): pip install 'surelay[console]'"
        ) from error
    settings = ConsoleSettings(path, token=token, read_only=read_only, trace_url=trace_url)
    settings.hosts = (*settings.hosts, host)
    from_env = (
        click.get_current_context().get_parameter_source("token")
        is click.core.ParameterSource.ENVIRONMENT
    )
    shown = f"http://{host}:{port}/" + (
        "?token=<SURELAY_CONSOLE_TOKEN>"
        if token and from_env
        else f"?token={token}"
        if token
        else ""
    )
    err_console.print(
        f"surelay console for {path}: {shown}" + (" (read-only)" if read_only else "")
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
