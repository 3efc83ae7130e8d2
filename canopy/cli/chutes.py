"""``canopy chutes list|get|delete`` and ``canopy warmup``: a chute author's view of the API's registry.

Seam: the author's side of the API's chute REST routes (``GET /chutes``, ``GET|DELETE
/chutes/{owner}/{name}``, ``POST /chutes/{owner}/{name}/_canopy/warmup``), shared with
``canopy deploy`` (canopy/cli/deploy.py): ``ApiClient`` talks to the API with the caller's key
(``--api``/``CANOPY_API_URL``, ``--key``/``CANOPY_API_KEY``), and turns what goes wrong (no
key, a refused connection, the API's typed error envelope) into ``CliProblem``, one line the
command prints before it exits. Mounted by canopy/cli/main.py as the ``chutes`` group and
the ``warmup`` command. A chute is named ``owner/name`` or, when only one chute the key
sees (public ones and its owner's private ones) has that name, ``name``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import aiohttp
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

#: The API the README's quick start runs (and ``./run.sh demo``, when the port is free).
DEFAULT_API_URL = "http://127.0.0.1:8000"
KEY_HINT = ("set CANOPY_API_KEY or pass --key; create one with "
            "`canopy keys create --name NAME --owner YOUR_USERNAME --scope invoke --scope deploy`")
#: Seconds a request may wait for the API's answer (a deploy inspects the chute first: longer).
REQUEST_TIMEOUT_S = 60.0
#: The last lines of an error's ``detail`` (an inspection's traceback) that are printed.
DETAIL_LINES = 12

ApiUrl = typer.Option(DEFAULT_API_URL, "--api", envvar="CANOPY_API_URL", show_envvar=True,
                      help="The Canopy API's base URL.")
ApiKey = typer.Option(None, "--key", envvar="CANOPY_API_KEY", show_envvar=True, show_default=False,
                      help="Your API key (Bearer); deploy, delete and warmup need its `deploy` scope.")
JsonOut = typer.Option(False, "--json", help="Print the API's JSON answer instead of a table.")
ChuteName = typer.Argument(..., help="The chute: OWNER/NAME, or NAME when only one chute you see has that name.")

T = TypeVar("T")


class CliProblem(Exception):
    """What ends a command: ``message`` (one line, or the API's message with its lines) and
    the exit ``code`` (1: it failed, 2: the command line or the environment needs a fix)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as an error (never as rich markup) and exit with ``code``."""
    err_console.print("[red]error:[/red] " + escape(message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine ``make()`` returns; a CliProblem ends the command with its message."""
    async def main() -> T:
        return await make()

    try:
        return asyncio.run(main())
    except CliProblem as problem:
        fail(problem.message, problem.code)


def api_error_message(status: int, text: str) -> str:
    """What to print for an error answer: the envelope's type and message (plus its ``detail``,
    e.g. an inspection's traceback lines), or the status and the start of a non-JSON body."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or "message" not in error:
        snippet = " ".join(text.split())[:300] or "(empty body)"
        return f"the API answered {status}: {snippet}"
    kind = error.get("code") if error.get("type") in (None, "invalid_request_error", "api_error") else None
    kind = kind or error.get("type") or "error"
    message = f"{status} {kind}: {error['message']}"
    detail = error.get("detail")
    if detail is not None and not isinstance(detail, str):  # e.g. a payload's failing fields
        detail = "\n".join(map(str, detail)) if isinstance(detail, list) else json.dumps(detail)
    if detail and detail.strip() and detail.strip() not in str(error["message"]):
        message += "\n" + "\n".join(detail.strip().splitlines()[-DETAIL_LINES:])
    return message


def _hint(status: int) -> str:
    if status == 401:
        return f"\nthe API refused the key: {KEY_HINT}"
    if status == 403:
        return ("\nyour key may not do this: deploying, deleting and warming up need a key whose owner owns "
                "the chute, with the `deploy` scope (or an admin key)")
    return ""


class ApiClient:
    """The Canopy API at ``url``, called with ``key``: an async context manager."""

    def __init__(self, url: str | None, key: str | None) -> None:
        url = (url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise CliProblem(f"the API URL {url!r} is not an http(s) URL: pass --api http://HOST:PORT "
                             "or set CANOPY_API_URL", 2)
        if not key or not key.strip():
            raise CliProblem(f"no API key: {KEY_HINT}", 2)
        self.url = url
        self._headers = {"Authorization": f"Bearer {key.strip()}"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(headers=self._headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None, data: Any = None,
                      headers: dict[str, str] | None = None, timeout_s: float = REQUEST_TIMEOUT_S) -> Any:
        """The JSON of a 2xx answer; anything else raises CliProblem with what to print."""
        assert self._session is not None, "use ApiClient in `async with`"
        url = self.url + path
        try:
            async with self._session.request(method, url, params=params, data=data, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc)
            raise CliProblem(f"cannot reach the API at {self.url} ({reason}); set its address with --api URL "
                             "or CANOPY_API_URL") from None
        except TimeoutError:
            raise CliProblem(f"the API at {self.url} did not answer {method} {path} within {timeout_s:.0f} s") from None
        except aiohttp.ClientError as exc:
            raise CliProblem(f"{method} {url} failed: {exc or type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise CliProblem(api_error_message(status, text) + _hint(status))
        try:
            return json.loads(text) if text else {}
        except ValueError:
            raise CliProblem(f"the API answered {method} {path} with {status} but not JSON: {text[:200]!r}") from None

    async def chutes(self) -> list[dict[str, Any]]:
        """``GET /chutes``: the public chutes and the key owner's private ones."""
        body = await self.request("GET", "/chutes")
        chutes = body.get("chutes") if isinstance(body, dict) else None
        if not isinstance(chutes, list):
            raise CliProblem(f"the API's GET /chutes answer has no chutes list: {str(body)[:200]}")
        return [chute for chute in chutes if isinstance(chute, dict)]

    async def resolve(self, ref: str) -> tuple[str, str]:
        """(owner, name) of the chute ``ref`` names: ``owner/name``, or a ``name`` only one
        chute the key sees has. An ``owner/name`` the list lacks (another owner's private
        chute, for an admin) is passed on as it is: the API answers for it."""
        ref = ref.strip().strip("/")
        if not ref:
            raise CliProblem("give a chute: OWNER/NAME or NAME", 2)
        chutes = await self.chutes()
        exact = [c for c in chutes if f"{c.get('owner')}/{c.get('name')}" == ref]
        matches = exact or [c for c in chutes if c.get("name") == ref]
        if len(matches) == 1:
            return str(matches[0]["owner"]), str(matches[0]["name"])
        if len(matches) > 1:
            names = ", ".join(sorted(f"{c['owner']}/{c['name']}" for c in matches))
            raise CliProblem(f"{ref!r} names several chutes ({names}): give OWNER/NAME", 2)
        owner, slash, name = ref.partition("/")
        if slash and owner and name:
            return owner, name
        raise CliProblem(f"no chute named {ref!r} among those your key sees (public ones and your own); "
                         "`canopy chutes list` shows them, OWNER/NAME names another owner's")


def chute_path(owner: str, name: str) -> str:
    return f"/chutes/{owner}/{name}"


def print_json(body: Any) -> None:
    """The API's JSON, as it came, on stdout (no colours, no wrapping)."""
    typer.echo(json.dumps(body, indent=2, sort_keys=True))


def chute_table(chute: dict[str, Any], title: str | None = None) -> Table:
    """One chute (a ChuteOut) as a two-column table."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [("chute", f"{chute.get('owner')}/{chute.get('name')}"), ("chute id", chute.get("chute_id")),
            ("revision", chute.get("revision")), ("public", "yes" if chute.get("public") else "no (private)"),
            ("instances", chute.get("instances")), ("max instances", chute.get("max_instances")),
            ("shutdown after", f"{chute.get('shutdown_after_seconds')} s idle"),
            ("model", chute.get("model")), ("tagline", chute.get("tagline")),
            ("pip", " ".join((chute.get("environment") or {}).get("pip") or [])),
            ("external egress", "allowed" if chute.get("allow_external_egress") else "")]
    for label, value in rows:
        if value not in (None, ""):
            table.add_row(label, escape(str(value)))
    return table


def urls_table(chute: dict[str, Any]) -> Table:
    """The chute's public URLs, one per cord (method, URL, streaming or not)."""
    table = Table(title="public URLs", title_justify="left")
    table.add_column("method")
    table.add_column("URL", overflow="fold")
    table.add_column("stream")
    cords = [c for c in chute.get("cords") or [] if isinstance(c, dict)]
    urls = [str(u) for u in chute.get("urls") or []]
    for index, url in enumerate(urls):
        cord = cords[index] if index < len(cords) else {}
        table.add_row(str(cord.get("public_api_method", "")), escape(url), "yes" if cord.get("stream") else "")
    return table


# -- the commands ------------------------------------------------------------------------

app = typer.Typer(help="Your chutes in the API's registry: list, get, delete.", no_args_is_help=True)


@app.command("list")
def list_chutes(api: str = ApiUrl, key: str | None = ApiKey, as_json: bool = JsonOut) -> None:
    """List the chutes your key sees: every public chute and your own private ones."""
    async def go() -> list[dict[str, Any]]:
        async with ApiClient(api, key) as client:
            return await client.chutes()

    chutes = run_async(go)
    if as_json:
        print_json({"chutes": chutes})
        return
    if not chutes:
        console.print("no chutes yet: `canopy deploy path/to/file.py:chute` deploys one")
        return
    table = Table(title=f"{len(chutes)} chute(s) at {api}", title_justify="left")
    for column in ("chute", "public", "instances", "revision", "cords", "tagline"):
        table.add_column(column, overflow="fold")
    for chute in sorted(chutes, key=lambda c: (str(c.get("owner")), str(c.get("name")))):
        table.add_row(escape(f"{chute.get('owner')}/{chute.get('name')}"), "yes" if chute.get("public") else "no",
                      str(chute.get("instances", "?")), str(chute.get("revision", ""))[:12],
                      str(len(chute.get("cords") or [])), escape(str(chute.get("tagline") or "")))
    console.print(table)


def on_chute(api: str, key: str | None, name: str, method: str, suffix: str = "") -> tuple[str, str, dict[str, Any]]:
    """(owner, name, the API's answer) of ``METHOD /chutes/OWNER/NAME{suffix}`` for chute ``name``."""
    async def go() -> tuple[str, str, dict[str, Any]]:
        async with ApiClient(api, key) as client:
            owner, chute = await client.resolve(name)
            body: dict[str, Any] = await client.request(method, chute_path(owner, chute) + suffix)
            return owner, chute, body

    return run_async(go)


@app.command("get")
def get_chute(name: str = ChuteName, api: str = ApiUrl, key: str | None = ApiKey, as_json: bool = JsonOut) -> None:
    """Show one chute: its revision, instances, public URLs and revisions."""
    _, _, chute = on_chute(api, key, name, "GET")
    if as_json:
        print_json(chute)
        return
    console.print(chute_table(chute))
    console.print(urls_table(chute))
    revisions = [r for r in chute.get("revisions") or [] if isinstance(r, dict)]
    if revisions:
        table = Table(title="revisions", title_justify="left")
        for column in ("revision", "size", "created"):
            table.add_column(column, overflow="fold")
        for revision in revisions:
            current = " (current)" if revision.get("revision") == chute.get("revision") else ""
            size = revision.get("size")
            table.add_row(f"{revision.get('revision')}{current}", f"{size:,} bytes" if isinstance(size, int) else "",
                          str(revision.get("created_at", "")))
        console.print(table)


@app.command("delete")
def delete_chute(name: str = ChuteName, yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask first."),
                 api: str = ApiUrl, key: str | None = ApiKey, as_json: bool = JsonOut) -> None:
    """Delete a chute (your own with a deploy-scoped key, or any with an admin key)."""
    async def find() -> tuple[str, str]:
        async with ApiClient(api, key) as client:
            return await client.resolve(name)

    owner, chute = run_async(find)
    if not yes and not typer.confirm(f"delete chute {owner}/{chute}? Its URLs stop answering", default=False,
                                       err=True):
        err_console.print("nothing deleted")
        raise typer.Exit(1)

    async def go() -> dict[str, Any]:
        async with ApiClient(api, key) as client:
            body: dict[str, Any] = await client.request("DELETE", chute_path(owner, chute))
            return body

    body = run_async(go)
    if as_json:
        print_json(body)
        return
    console.print(f"[green]deleted[/green] {escape(owner)}/{escape(chute)} (chute id {body.get('chute_id')})")


def warmup(name: str = ChuteName, api: str = ApiUrl, key: str | None = ApiKey, as_json: bool = JsonOut) -> None:
    """Ask the network to start an instance of a chute (miners pick it up at the validators' next announce)."""
    owner, chute, body = on_chute(api, key, name, "POST", "/_canopy/warmup")
    if as_json:
        print_json(body)
        return
    console.print(f"[green]warmup asked[/green] for {escape(owner)}/{escape(chute)} at revision "
                  f"{body.get('revision')}: {body.get('instances', 0)} instance(s) ready now; a miner starts one "
                  "when validators next announce the registry")
