"""``canopy deploy path/to/file.py:chute``: bundle a chute's source and upload it to the API's registry.

Seam: the author's side of ``POST /chutes`` (canopy/bundle.py builds the content-addressed
bundle; canopy/cli/chutes.py holds the API client, its options and its errors). Mounted by
canopy/cli/main.py as the ``deploy`` command. The bundle goes up as the request body
(``application/gzip``) with its sha256 in ``X-Canopy-Revision``, streamed in chunks under a
progress bar; the API inspects it and deploys it as ``<key owner>/<chute name>``. The
answer (chute id, revision, public URLs) prints as a table, or as the API's JSON with
``--json``. ``--wait`` then polls ``GET /chutes/{owner}/{name}`` until a miner runs an
instance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import typer
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from canopy.bundle import Bundle, BundleError, build_bundle
from canopy.cli.chutes import (ApiClient, ApiKey, ApiUrl, CliProblem, JsonOut, chute_path, chute_table, console,
                               err_console, fail, print_json, run_async, urls_table)

#: Bytes per write of the upload (the progress bar moves once per chunk).
CHUNK_BYTES = 64 * 1024
#: Seconds a deploy may wait for the API's answer: it unpacks and imports the chute first.
DEPLOY_TIMEOUT_S = 600.0


class ProgressPayload(Payload):
    """The bundle as a request body with a Content-Length, written in CHUNK_BYTES pieces,
    calling ``on_sent(bytes_so_far)`` after each."""

    def __init__(self, data: bytes, on_sent: Callable[[int], None]) -> None:
        super().__init__(data, content_type="application/gzip")
        self._data = data
        self._size = len(data)
        self._on_sent = on_sent

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._data.decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        data = self._data if content_length is None else self._data[:content_length]
        view = memoryview(data)
        for start in range(0, len(view), CHUNK_BYTES):
            await writer.write(view[start:start + CHUNK_BYTES])
            self._on_sent(min(start + CHUNK_BYTES, len(view)))


async def upload(client: ApiClient, bundle: Bundle, params: dict[str, str]) -> dict[str, Any]:
    """``POST /chutes`` with the bundle under a progress bar (on stderr); the API's ChuteOut."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task("uploading", total=bundle.size)

        def sent(count: int) -> None:
            done = count >= bundle.size
            progress.update(task, completed=count, description="uploaded, the API inspects it" if done else "uploading")

        body = ProgressPayload(bundle.data, sent)
        answer: dict[str, Any] = await client.request(
            "POST", "/chutes", params=params, data=body, headers={"X-Canopy-Revision": bundle.revision},
            timeout_s=DEPLOY_TIMEOUT_S)
        progress.update(task, description="uploaded")
    return answer


async def wait_for_instance(client: ApiClient, owner: str, name: str, timeout_s: float, poll_s: float) -> bool:
    """Poll ``GET /chutes/{owner}/{name}`` until it counts an instance (True) or ``timeout_s`` passes."""
    started = time.monotonic()
    with err_console.status(f"waiting for a miner to start {owner}/{name} ...") as status:
        while True:
            waited = time.monotonic() - started
            status.update(f"waiting for a miner to start {escape(owner)}/{escape(name)}: {waited:.0f} s")
            try:
                chute = await client.request("GET", chute_path(owner, name))
            except CliProblem as problem:
                if not problem.message.startswith("cannot reach"):
                    raise
                chute = {}  # the API restarting: keep asking until the timeout
            if int(chute.get("instances") or 0) >= 1:
                return True
            if waited + poll_s > timeout_s:
                return False
            await asyncio.sleep(poll_s)


def deploy(
    ref: str = typer.Argument(..., help="The chute: path/to/file.py:ATTR, path/to/package:ATTR or MODULE:ATTR "
                              "(ATTR defaults to chute). The file's folder (or the package) is uploaded."),
    api: str = ApiUrl,
    key: str | None = ApiKey,
    private: bool = typer.Option(False, "--private", help="Only your keys may call it (default: public; "
                                 "every deploy sets this)."),
    max_instances: int | None = typer.Option(None, "--max-instances", min=1, show_default=False,
                                             help="Most instances the network runs at once (default: the chute's own)."),
    shutdown_after: int | None = typer.Option(None, "--shutdown-after", min=0, show_default=False,
                                              help="Seconds without users' calls before a miner stops an instance "
                                              "(default: 300)."),
    wait: bool = typer.Option(False, "--wait/--no-wait", help="After deploying, wait until a miner runs an instance."),
    wait_timeout: float = typer.Option(600.0, "--wait-timeout", min=1, help="Seconds --wait waits (then exit 1)."),
    poll_s: float = typer.Option(2.0, "--poll-interval", min=0.05, hidden=True, help="Seconds between --wait's polls."),
    as_json: bool = JsonOut,
) -> None:
    """Bundle a chute's source and deploy it to the API: a new chute or a new revision of yours."""
    try:
        ApiClient(api, key)  # the URL and the key, checked before anything is built
    except CliProblem as problem:
        fail(problem.message, problem.code)
    try:
        bundle = build_bundle(ref)
    except (BundleError, OSError) as exc:
        fail(f"cannot bundle {ref!r}: {exc}")
    err_console.print(f"bundle: {len(bundle.files)} file(s), {bundle.size:,} bytes, entry {escape(bundle.entry)}, "
                      f"revision {bundle.revision}", highlight=False)
    params = {"public": "false" if private else "true"}
    if max_instances is not None:
        params["max_instances"] = str(max_instances)
    if shutdown_after is not None:
        params["shutdown_after_seconds"] = str(shutdown_after)

    async def go() -> tuple[dict[str, Any], bool | None]:
        async with ApiClient(api, key) as session:
            chute = await upload(session, bundle, params)
            if as_json:
                print_json(chute)
            else:
                _print_deployed(chute)
            if not wait:
                return chute, None
            owner, name = str(chute.get("owner")), str(chute.get("name"))
            if int(chute.get("instances") or 0) >= 1:
                return chute, True
            return chute, await wait_for_instance(session, owner, name, wait_timeout, poll_s)

    chute, ready = run_async(go)
    ref_name = f"{chute.get('owner')}/{chute.get('name')}"
    if ready is False:
        fail(f"no miner picked up {ref_name} within {wait_timeout:.0f} s yet; `canopy warmup {ref_name}` "
             "asks the network again (`canopy chutes get` shows its instances)")
    if ready:
        err_console.print(f"[green]ready:[/green] {escape(ref_name)} has a running instance")


def _print_deployed(chute: dict[str, Any]) -> None:
    what = "new chute" if chute.get("created") else "new revision (or the same code again)"
    console.print(chute_table(chute, title=f"deployed: {what}"))
    if chute.get("urls"):
        console.print(urls_table(chute))
    environment = chute.get("environment") or {}
    if environment.get("unsupported"):
        console.print(f"[yellow]note:[/yellow] its Image needs {escape(', '.join(environment['unsupported']))}: miners "
                      "on the default sandbox runtime refuse it; only miners on --chutes.runtime container host it")
    if not chute.get("instances"):
        console.print("no instance runs yet: a miner starts one when validators next announce the registry "
                      "(`--wait` waits for it)")
