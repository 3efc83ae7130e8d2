"""``canopy run MODULE:chute --dev --port 8000``: serve a chute locally for development.

It serves the chute in this process
with ``canopy.instance.serve`` (no auth, CORS open in dev mode, dependencies without a URL in
CANOPY_CHUTE_URLS run in-process); call its cords from a script with
``CANOPY_DEV_URL=http://127.0.0.1:PORT python my_chute.py`` (``canopy.dev``) or open
``/docs``.
"""

from __future__ import annotations

import typer
from rich.console import Console

from canopy.chute import ChuteLoadError, load_chute

console = Console(stderr=True)


def run(
    ref: str = typer.Argument(..., help="The chute: MODULE:ATTR or path/to/file.py:ATTR (ATTR defaults to chute)."),
    dev: bool = typer.Option(False, "--dev", help="Development mode: open CORS, run dependencies in-process."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on."),
    concurrency: int | None = typer.Option(None, "--concurrency", min=1, help="Override the chute's concurrency."),
    debug: bool = typer.Option(False, "--debug", help="Log debug lines."),
) -> None:
    """Serve a chute over HTTP (Ctrl-C stops it; shutdown hooks run)."""
    from canopy.instance import serve
    from canopy.logging import LoggingSettings, setup_logging

    try:
        chute = load_chute(ref)
    except ChuteLoadError as exc:
        console.print(f"[red]cannot load chute {ref!r}:[/red] {exc}")
        raise typer.Exit(2) from None
    setup_logging(LoggingSettings(debug=debug), role="dev" if dev else "chute")
    url = f"http://{host}:{port}"
    console.print(f"[bold]{chute.username}/{chute.name}[/bold] on {url}  (docs: {url}/docs)")
    for cord in chute.cords.values():
        console.print(f"  {cord.method:6} {cord.path}{'  (stream)' if cord.stream else ''}")
    if dev:
        console.print(f"call cords from a script with: CANOPY_DEV_URL={url} python your_script.py")
    code = serve(chute, host, port, concurrency=concurrency, dev=dev)
    if code:
        raise typer.Exit(code)
