"""``canopy devices ...``: which hotkey owns each GPU uuid in the validator's store, and the
operator's override.

For validator operators. A uuid belongs to the first hotkey with a passing GraVal
verification of it; any other hotkey claiming it is refused (``uuid_taken``) and never
challenged, until the owner deregisters (``validator.identity``). ``owner`` reassigns a
uuid (``--pin``: it stays even when that hotkey deregisters), ``release`` forgets the owner
(the next passing verification claims it), ``list`` shows them. The store is the
validator's: ``--database-url``, else the SQLite file of ``--wallet.name``/``--wallet.hotkey``
in ``$CANOPY_HOME`` (the validator's default); a running validator sees a change at its next
step.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from node.config import default_database_url
from store.queries import DeviceOwner, ValidatorStore

app = typer.Typer(help="GPU ownership in the validator's store: list, reassign or pin, release.", no_args_is_help=True)
console = Console()

DatabaseUrl = typer.Option(None, "--database-url", help="The validator's store [default: the wallet's SQLite file in $CANOPY_HOME].")
WalletName = typer.Option("default", "--wallet.name", help="Wallet of the validator whose store to use (when no --database-url).")
WalletHotkey = typer.Option("default", "--wallet.hotkey", help="Hotkey of the validator whose store to use (when no --database-url).")


def _run(database_url: Optional[str], wallet: str, hotkey: str, action: Callable[[ValidatorStore], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        store = await ValidatorStore.open(database_url or default_database_url(wallet, hotkey))
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _table(owners: list[DeviceOwner], latest: dict[tuple[str, str], Any]) -> Table:
    table = Table(title="Device owners", header_style="bold")
    for column in ("UUID", "OWNER", "SINCE", "PINNED", "LAST VERIFICATION"):
        table.add_column(column)
    for owner in sorted(owners, key=lambda row: (row.hotkey, row.uuid)):
        row = latest.get((owner.hotkey, owner.uuid))
        last = "none" if row is None else f"{'ok' if row.ok else row.reason} {row.model_id} {_when(row.verified_at)}"
        table.add_row(owner.uuid, owner.hotkey, _when(owner.since), "yes" if owner.pinned else "", last)
    return table


@app.command("list")
def list_owners(hotkey: Optional[str] = typer.Option(None, "--hotkey", help="Only this hotkey's devices."),
                database_url: Optional[str] = DatabaseUrl, wallet: str = WalletName,
                wallet_hotkey: str = WalletHotkey) -> None:
    """List the device uuids and the hotkeys that own them."""
    async def read(store: ValidatorStore) -> tuple[list[DeviceOwner], dict]:
        return list((await store.device_owners(hotkey)).values()), await store.latest_verifications(hotkey)

    owners, latest = _run(database_url, wallet, wallet_hotkey, read)
    console.print(_table(owners, latest))


@app.command()
def owner(uuid: str = typer.Argument(..., help="The device uuid (GPU-...)."),
          hotkey: str = typer.Option(..., "--hotkey", help="The hotkey (ss58) the device belongs to from now on."),
          pin: bool = typer.Option(False, "--pin/--no-pin", help="Keep it even when that hotkey deregisters."),
          database_url: Optional[str] = DatabaseUrl, wallet: str = WalletName,
          wallet_hotkey: str = WalletHotkey) -> None:
    """Reassign a device to a hotkey (and pin it): other hotkeys' claims of it are refused from the next round."""
    async def change(store: ValidatorStore) -> tuple[DeviceOwner | None, DeviceOwner]:
        before = (await store.device_owners()).get(uuid)
        return before, await store.set_device_owner(uuid, hotkey, pinned=pin, now=time.time())

    before, after = _run(database_url, wallet, wallet_hotkey, change)
    was = f" (was {before.hotkey})" if before is not None and before.hotkey != hotkey else ""
    console.print(f"Device [bold]{uuid}[/] belongs to {after.hotkey}{was}{', pinned' if after.pinned else ''}.")


@app.command()
def release(uuid: str = typer.Argument(..., help="The device uuid (GPU-...)."),
            database_url: Optional[str] = DatabaseUrl, wallet: str = WalletName,
            wallet_hotkey: str = WalletHotkey) -> None:
    """Forget a device's owner: the next hotkey with a passing verification of it owns it."""
    gone = _run(database_url, wallet, wallet_hotkey, lambda store: store.release_device(uuid))
    if gone is None:
        console.print(f"[red]Refused:[/] no owner recorded for {uuid}")
        raise typer.Exit(1)
    console.print(f"Device [bold]{uuid}[/] released (was {gone.hotkey}).")
