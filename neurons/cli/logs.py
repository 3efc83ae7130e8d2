"""``canopy logs``: the public API's request log, newest first, from the operator's shell.

For API operators (``/admin/logs`` does the same over HTTP). Reads the store the API
writes (``--database-url``, else the SQLite file of ``--wallet.name``/``--wallet.hotkey``
in ``$CANOPY_HOME``, as ``canopy keys``). Filters: ``--key NAME``, ``--status 200``,
``--since 1h`` (or 30m, 7d, an ISO time, epoch seconds), ``--limit 50``; ``--json`` prints
one JSON object a line instead of the table. Rows older than ``--api.log_retention_days``
are deleted by the running API.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from api.keys import KeyError_, KeyStore
from api.requestlog import log_dict, parse_since, query_logs
from store.api_tables import ApiKey
from neurons.cli.keys import DatabaseUrl, WalletHotkey, WalletName
from node.config import default_database_url
from store.queries import ValidatorStore

console = Console()


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def logs(key: Optional[str] = typer.Option(None, "--key", help="Only this key's requests (its name)."),
         status: Optional[int] = typer.Option(None, "--status", min=100, max=599, help="Only this HTTP status."),
         since: Optional[str] = typer.Option(None, "--since", help="1h, 30m, 7d, an ISO time or epoch seconds."),
         limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="Most rows to show."),
         as_json: bool = typer.Option(False, "--json", help="One JSON object a line instead of the table."),
         database_url: Optional[str] = DatabaseUrl, wallet: str = WalletName, hotkey: str = WalletHotkey) -> None:
    """Show the API's request log, newest first (UTC times)."""
    try:
        moment = parse_since(since) if since else None
    except ValueError as error:
        console.print(f"[red]Refused:[/] {error}")
        raise typer.Exit(1) from None

    async def go() -> tuple[list[Any], dict[int, str]]:
        store = await ValidatorStore.open(database_url or default_database_url(wallet, hotkey))
        try:
            keys = KeyStore(store.engine)
            await keys.create_tables()
            key_id = (await keys.get(key)).id if key else None
            rows = await query_logs(store.engine, key_id=key_id, status=status, since=moment, limit=limit)
            async with keys.sessions() as session:
                names = dict((await session.execute(select(ApiKey.id, ApiKey.name))).all())
            return rows, names
        finally:
            await store.close()

    try:
        rows, names = asyncio.run(go())
    except KeyError_ as error:
        console.print(f"[red]Refused:[/] {error}")
        raise typer.Exit(1) from None
    if as_json:
        for row in rows:
            typer.echo(json.dumps({**log_dict(row), "key": names.get(row.key_id)}))
        return
    table = Table(title=f"API requests ({len(rows)} shown, newest first)", header_style="bold")
    for column in ("TIME (UTC)", "REQUEST", "KEY", "ROUTE", "MODEL", "STATUS", "ERROR", "MINER", "TRIED",
                   "LATENCY", "TOKENS", "CHARGED"):
        table.add_column(column, justify="right" if column in ("STATUS", "LATENCY", "TOKENS", "CHARGED") else "left")
    for row in rows:
        colour = "green" if row.status < 400 else "yellow" if row.status < 500 else "red"
        key_name = names.get(row.key_id, f"#{row.key_id}") if row.key_id is not None else "-"
        table.add_row(_when(row.created_at), row.id, key_name, row.route, row.model or "-",
                      f"[{colour}]{row.status}[/]", row.error or "", str(row.uid) if row.uid is not None else "-",
                      ",".join(map(str, json.loads(row.miners_tried or "[]"))) or "-", f"{row.latency_ms:.0f} ms",
                      f"{row.prompt_tokens}+{row.completion_tokens}", str(row.charged))
    console.print(table)
