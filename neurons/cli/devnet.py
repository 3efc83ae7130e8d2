"""``canopy devnet ...``: create and drive the embedded local chain from the shell.

For operators trying Canopy locally. Wallets made here are unencrypted and live under $CANOPY_HOME/wallets unless ``--wallet.path`` says
otherwise; ~/.bittensor is never touched by default.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
from rich.console import Console

from neurons.cli.tables import metagraph_table, short
from canopy.paths import canopy_home
from node.wallets import coldkey_ss58, create_devnet_wallet
from chain.base import ChainError
from chain.devnet import DevnetLedger

app = typer.Typer(help="The embedded devnet: a local chain in one SQLite file, shared by every local process.", no_args_is_help=True)
console = Console()


def _default_chain_path() -> Path:
    return canopy_home() / "devnet.sqlite"


def _default_wallet_path() -> Path:
    return canopy_home() / "wallets"


ChainPath = typer.Option(None, "--devnet.path", help="The devnet chain file [default: $CANOPY_HOME/devnet.sqlite].")
Netuid = typer.Option(1, "--netuid", min=0, max=65535, help="The subnet's uid.")
WalletName = typer.Option("default", "--wallet.name", help="Wallet (coldkey) name.")
WalletHotkey = typer.Option("default", "--wallet.hotkey", help="Hotkey name inside the wallet.")
WalletPath = typer.Option(None, "--wallet.path", help="Wallets folder [default: $CANOPY_HOME/wallets].")


def _open_ledger(path: Path | None) -> DevnetLedger:
    chain_file = path or _default_chain_path()
    if not chain_file.exists():
        console.print(f"[red]No devnet at {chain_file}.[/] Create it with [bold]canopy devnet init[/].")
        raise typer.Exit(1)
    return DevnetLedger(chain_file)


def _fail(error: ChainError) -> None:
    console.print(f"[red]Refused:[/] {error}")
    raise typer.Exit(1)


@app.command()
def init(
    netuid: int = Netuid,
    block_time: float = typer.Option(1.0, "--block-time", min=0.05, max=60, help="Seconds per block (fixed at genesis)."),
    tempo: int = typer.Option(10, "--tempo", min=1, help="Blocks between epochs."),
    weights_rate_limit: int = typer.Option(5, "--weights-rate-limit", min=0, help="Blocks between two set_weights of one hotkey."),
    max_uids: int = typer.Option(256, "--max-uids", min=1, max=4096, help="Uids before registration replaces the lowest."),
    max_validators: int = typer.Option(64, "--max-validators", min=1, help="Validator permits (top stake)."),
    stake_threshold: float = typer.Option(100.0, "--stake-threshold", min=0, help="Least stake (TAO) for a validator permit."),
    immunity_period: int = typer.Option(20, "--immunity-period", min=0, help="Blocks a new uid cannot be replaced."),
    commit_reveal: bool = typer.Option(False, "--commit-reveal/--no-commit-reveal",
                                       help="Weights are committed, then revealed a tempo later."),
    reset: bool = typer.Option(False, "--reset", help="Delete the existing devnet (and its state) first."),
    path: Path = ChainPath,
) -> None:
    """Create the devnet chain file and a subnet on it (idempotent unless --reset)."""
    chain_file = path or _default_chain_path()
    if reset:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{chain_file}{suffix}").unlink(missing_ok=True)
    ledger = DevnetLedger(chain_file, block_time=block_time)
    if netuid in ledger.subnets():
        console.print(f"Devnet at {chain_file}: subnet {netuid} exists (block {ledger.block()}). Use --reset to start over.")
        return
    try:
        ledger.create_subnet(
            netuid, tempo=tempo, weights_rate_limit=weights_rate_limit, max_allowed_uids=max_uids,
            max_validators=max_validators, stake_threshold=stake_threshold, immunity_period=immunity_period,
            commit_reveal=commit_reveal,
        )
    except ChainError as error:
        _fail(error)
    console.print(
        f"[green]Devnet ready[/] at {chain_file}: subnet {netuid}, {ledger.block_time:g}s blocks, tempo {tempo}, "
        f"stake threshold {stake_threshold:g} τ."
    )


@app.command()
def register(
    netuid: int = Netuid,
    wallet_name: str = WalletName,
    wallet_hotkey: str = WalletHotkey,
    wallet_path: Path = WalletPath,
    stake: float = typer.Option(0.0, "--stake", min=0, help="Also add this much stake (TAO) after registering."),
    path: Path = ChainPath,
) -> None:
    """Register a hotkey on the devnet subnet, creating the devnet wallet when it is missing."""
    ledger = _open_ledger(path)
    wallet = create_devnet_wallet(wallet_name, wallet_hotkey, wallet_path or _default_wallet_path())
    try:
        uid = ledger.register(netuid, wallet.hotkey.ss58_address, coldkey_ss58(wallet))
        if stake > 0:
            ledger.add_stake(netuid, wallet.hotkey.ss58_address, stake)
    except ChainError as error:
        _fail(error)
    console.print(
        f"[green]Registered[/] {wallet_name}/{wallet_hotkey} ({short(wallet.hotkey.ss58_address)}) as uid {uid} on netuid {netuid}"
        + (f", staked {stake:g} τ" if stake > 0 else "")
    )


@app.command(name="stake")
def add_stake(
    amount: float = typer.Option(..., "--amount", min=0, help="TAO to add (a devnet faucet: nothing is debited)."),
    netuid: int = Netuid,
    wallet_name: str = WalletName,
    wallet_hotkey: str = WalletHotkey,
    wallet_path: Path = WalletPath,
    path: Path = ChainPath,
) -> None:
    """Add stake to a registered devnet hotkey (validators need --stake-threshold for a permit)."""
    ledger = _open_ledger(path)
    from node.wallets import WalletError, open_wallet

    try:
        wallet = open_wallet(wallet_name, wallet_hotkey, str(wallet_path or _default_wallet_path()))
        total = ledger.add_stake(netuid, wallet.hotkey.ss58_address, amount)
    except (ChainError, WalletError) as error:
        console.print(f"[red]Refused:[/] {error}")
        raise typer.Exit(1)
    console.print(f"[green]Staked[/] {amount:g} τ on {wallet_name}/{wallet_hotkey}: {total:,.2f} τ in total on netuid {netuid}")


@app.command()
def metagraph(netuid: int = Netuid, path: Path = ChainPath) -> None:
    """Print the subnet's metagraph like `btcli subnets metagraph`."""
    ledger = _open_ledger(path)
    try:
        graph = ledger.metagraph(netuid)
    except ChainError as error:
        _fail(error)
    console.print(metagraph_table(graph, width=console.width))


@app.command()
def destroy(path: Path = ChainPath, wallets: bool = typer.Option(False, "--wallets", help="Also delete the devnet wallets.")) -> None:
    """Delete the devnet chain file (and, with --wallets, its wallets)."""
    chain_file = path or _default_chain_path()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{chain_file}{suffix}").unlink(missing_ok=True)
    if wallets:
        shutil.rmtree(_default_wallet_path(), ignore_errors=True)
    console.print(f"Removed {chain_file}" + (" and the devnet wallets" if wallets else ""))
