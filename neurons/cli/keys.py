"""``canopy keys ...``: the public API's client keys, from the operator's shell.

For API operators (``/admin/keys`` does the same over HTTP). The keys live in the store
the validator and the API share: ``--database-url``, else the SQLite file of
``--wallet.name``/``--wallet.hotkey`` in ``$CANOPY_HOME`` (the API's own default). A new key is printed once; ``list`` shows only its hint.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from api.keys import KeyError_, KeyInfo, KeyStore, parse_expiry
from node.config import default_database_url
from store.scopes import SCOPES
from store.queries import ValidatorStore

app = typer.Typer(help="API keys of the public gateway: create, list, edit, disable/enable, delete.", no_args_is_help=True)
console = Console()

DatabaseUrl = typer.Option(None, "--database-url",
                           help="The store shared with the API [default: the wallet's SQLite file in $CANOPY_HOME].")
WalletName = typer.Option("default", "--wallet.name", help="Wallet whose API store to use (when no --database-url).")
WalletHotkey = typer.Option("default", "--wallet.hotkey", help="Hotkey whose API store to use (when no --database-url).")
Credits = typer.Option(None, "--credits", min=0, help="Credits (one per successful answer); unlimited when left out.")
Expires = typer.Option(None, "--expires", help="'in 30 days', an ISO date (2027-01-31) or epoch seconds.")
RateLimit = typer.Option(None, "--rate-limit", help="N/Ws rule, repeatable: --rate-limit 10/60s --rate-limit 100/1h.")
Strategy = typer.Option(None, "--default-strategy", help="default, top_n:N or uids:1,2,3.")
Models = typer.Option(None, "--models", help="Models the key may use, repeatable; all when left out.")
Owner = typer.Option(None, "--owner", help="The chute owner (username) whose chutes the key may deploy and use.")
Scope = typer.Option(None, "--scope", help="invoke, deploy or admin, repeatable [default: invoke]; on edit: replaces them.")
ChuteRef = typer.Option(None, "--chute", help="owner/name: limit the key to these chutes, repeatable; all when left out.")


def _run(database_url: Optional[str], wallet: str, hotkey: str, action: Callable[[KeyStore], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        store = await ValidatorStore.open(database_url or default_database_url(wallet, hotkey))
        try:
            keys = KeyStore(store.engine)
            await keys.create_tables()
            return await action(keys)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except KeyError_ as error:
        console.print(f"[red]Refused:[/] {error}")
        raise typer.Exit(1) from None


def _when(moment: float | None) -> str:
    if moment is None:
        return "never"
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _table(keys: list[KeyInfo]) -> Table:
    table = Table(title="API keys", header_style="bold")
    for column in ("NAME", "KEY", "OWNER", "SCOPES", "CHUTES", "CREDITS", "EXPIRES", "LIMITS", "STRATEGY", "MODELS",
                   "STATE"):
        table.add_column(column)
    now = time.time()
    for key in keys:
        state = "disabled" if key.disabled else "expired" if key.expires_at and key.expires_at <= now else "active"
        table.add_row(key.name + (" (admin)" if key.admin else ""), key.hint, key.owner or "-",
                      ", ".join(scope for scope in SCOPES if scope in key.scopes),
                      ", ".join(sorted(key.chutes)) if key.chutes is not None else "all",
                      "unlimited" if key.credits is None else str(key.credits), _when(key.expires_at),
                      ", ".join(map(str, key.rate_limits)) or "default", key.default_strategy or "default",
                      ", ".join(key.models) if key.models is not None else "all", state)
    return table


def _fields(credits: Optional[int], expires: Optional[str], rate_limit: Optional[list[str]], strategy: Optional[str],
            models: Optional[list[str]], owner: Optional[str] = None, scopes: Optional[list[str]] = None,
            chutes: Optional[list[str]] = None) -> dict[str, Any]:
    try:
        return {"credits": credits, "expires_at": parse_expiry(expires) if expires else None,
                "rate_limits": rate_limit, "default_strategy": strategy, "models": models,
                "owner": owner, "scopes": scopes or None, "chutes": chutes or None}
    except KeyError_ as error:
        console.print(f"[red]Refused:[/] {error}")
        raise typer.Exit(1) from None


@app.command()
def create(name: str = typer.Option(..., "--name", help="A name for the key (unique)."), credits: Optional[int] = Credits,
           expires: Optional[str] = Expires, rate_limit: Optional[list[str]] = RateLimit,
           default_strategy: Optional[str] = Strategy, models: Optional[list[str]] = Models,
           owner: Optional[str] = Owner, scope: Optional[list[str]] = Scope, chute: Optional[list[str]] = ChuteRef,
           admin: bool = typer.Option(False, "--admin", help="May call /admin/* (adds the admin scope)."),
           database_url: Optional[str] = DatabaseUrl, wallet: str = WalletName, hotkey: str = WalletHotkey) -> None:
    """Create a key and print it once (only its hash is stored)."""
    fields = _fields(credits, expires, rate_limit, default_strategy, models, owner, scope, chute)
    if admin:
        fields["admin"] = True
    info, key = _run(database_url, wallet, hotkey, lambda keys: keys.create(name, **fields))
    console.print(f"Created key [bold]{info.name}[/] ({info.hint}). Copy it now, it is not shown again:")
    typer.echo(key)


@app.command("list")
def list_keys(database_url: Optional[str] = DatabaseUrl, wallet: str = WalletName, hotkey: str = WalletHotkey) -> None:
    """List the keys (hints only, never the keys)."""
    console.print(_table(_run(database_url, wallet, hotkey, lambda keys: keys.list())))


@app.command()
def edit(name: str = typer.Argument(..., help="The key's name."), credits: Optional[int] = Credits,
         add_credits: Optional[int] = typer.Option(None, "--add-credits", help="Add to the current credits."),
         expires: Optional[str] = Expires, rate_limit: Optional[list[str]] = RateLimit,
         default_strategy: Optional[str] = Strategy, models: Optional[list[str]] = Models,
         unlimited: bool = typer.Option(False, "--unlimited", help="Remove the credit limit."),
         never_expires: bool = typer.Option(False, "--never-expires", help="Remove the expiry."),
         owner: Optional[str] = Owner, scope: Optional[list[str]] = Scope, chute: Optional[list[str]] = ChuteRef,
         no_owner: bool = typer.Option(False, "--no-owner", help="Remove the owner."),
         all_chutes: bool = typer.Option(False, "--all-chutes", help="Remove the chute allow-list."),
         admin: Optional[bool] = typer.Option(None, "--admin/--no-admin", help="Add or remove the admin scope."),
         database_url: Optional[str] = DatabaseUrl, wallet: str = WalletName, hotkey: str = WalletHotkey) -> None:
    """Change a key's credits, expiry, limits, strategy, models, owner, scopes or chutes."""
    fields = _fields(credits, expires, rate_limit, default_strategy, models, owner, scope, chute)
    if admin is not None:
        fields["admin"] = admin
    unset = frozenset(name for name, flag in (("credits", unlimited), ("expires_at", never_expires),
                                              ("owner", no_owner), ("chutes", all_chutes)) if flag)

    async def change(keys: KeyStore) -> KeyInfo:
        if add_credits is not None:
            current = (await keys.get(name)).credits
            fields["credits"] = (current or 0) + add_credits
        return await keys.edit(name, unset=unset, **fields)

    console.print(_table([_run(database_url, wallet, hotkey, change)]))


@app.command()
def disable(name: str = typer.Argument(..., help="The key's name."), database_url: Optional[str] = DatabaseUrl,
            wallet: str = WalletName, hotkey: str = WalletHotkey) -> None:
    """Refuse the key (401) until it is enabled again."""
    console.print(_table([_run(database_url, wallet, hotkey, lambda keys: keys.edit(name, disabled=True))]))


@app.command()
def enable(name: str = typer.Argument(..., help="The key's name."), database_url: Optional[str] = DatabaseUrl,
           wallet: str = WalletName, hotkey: str = WalletHotkey) -> None:
    """Accept a disabled key again."""
    console.print(_table([_run(database_url, wallet, hotkey, lambda keys: keys.edit(name, disabled=False))]))


@app.command()
def delete(name: str = typer.Argument(..., help="The key's name."),
           yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
           database_url: Optional[str] = DatabaseUrl, wallet: str = WalletName, hotkey: str = WalletHotkey) -> None:
    """Delete a key for good (its request logs stay)."""
    if not yes and not typer.confirm(f"Delete key {name!r}?"):
        raise typer.Exit(1)
    _run(database_url, wallet, hotkey, lambda keys: keys.delete(name))
    console.print(f"Deleted key [bold]{name}[/].")
