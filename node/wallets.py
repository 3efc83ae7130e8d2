"""Wallet seam: opening operator wallets with clear errors, and making devnet wallets.

``open_wallet`` and ``require_registered`` are the start-up checks of a neuron;
``create_devnet_wallet`` makes the wallets of a local devnet. Wallets are
``bittensor.Wallet``; the devnet ones live under a project-local folder and never touch
~/.bittensor unless the caller passes that path.
"""

from __future__ import annotations

from pathlib import Path

import bittensor as bt

from chain.base import Chain


class WalletError(RuntimeError):
    """A wallet or hotkey is missing or unusable; the message names the fix."""


def _wallet_dir(wallet: bt.Wallet) -> Path:
    return Path(wallet.path).expanduser() / wallet.name


def _create_hint(name: str, hotkey: str, path: str, network: str) -> str:
    if network == "devnet":
        return f"canopy devnet register --wallet.name {name} --wallet.hotkey {hotkey}"
    return (
        f"btcli wallet create --wallet {name} --wallet-hotkey {hotkey}"
        + (f" --wallet-path {path}" if path and not path.startswith("~/.bittensor") else "")
    )


def open_wallet(name: str, hotkey: str, path: str, *, network: str = "devnet") -> bt.Wallet:
    """Open an existing wallet and load its hotkey, or raise WalletError naming the fix.

    The coldkey is not unlocked: neurons sign with the hotkey only.
    """
    wallet = bt.Wallet(name=name, hotkey=hotkey, path=path)
    hint = _create_hint(name, hotkey, path, network)
    if not _wallet_dir(wallet).is_dir():
        raise WalletError(f"wallet {name!r} does not exist under {path}: create it with `{hint}`")
    if not Path(wallet.hotkey_file.path).exists():
        raise WalletError(f"hotkey {hotkey!r} of wallet {name!r} does not exist under {path}: create it with `{hint}`")
    try:
        wallet.hotkey  # noqa: B018 - load now so a broken keyfile fails at start-up
    except Exception as error:  # bittensor raises several keyfile error types
        raise WalletError(f"hotkey {hotkey!r} of wallet {name!r} cannot be read ({error}); regenerate it with `{hint}`") from None
    return wallet


def coldkey_ss58(wallet: bt.Wallet) -> str:
    """The coldkey's public address, read from coldkeypub.txt (no password needed)."""
    address: str = wallet.coldkeypub.ss58_address
    return address


def create_devnet_wallet(name: str, hotkey: str, path: str | Path) -> bt.Wallet:
    """Create (or reuse) an unencrypted coldkey + hotkey for the devnet, without prompts."""
    wallet = bt.Wallet(name=name, hotkey=hotkey, path=str(path))
    if not Path(wallet.coldkeypub_file.path).exists():
        wallet.create_new_coldkey(use_password=False, suppress=True, overwrite=False)
    if not Path(wallet.hotkey_file.path).exists():
        wallet.create_new_hotkey(use_password=False, suppress=True, overwrite=False)
    return wallet


async def require_registered(chain: Chain, wallet: bt.Wallet, netuid: int, *, network: str) -> int:
    """The uid of the wallet's hotkey on ``netuid``, or WalletError naming how to register."""
    uid = await chain.uid_of(netuid, wallet.hotkey.ss58_address)
    if uid is None:
        if network == "devnet":
            fix = f"canopy devnet register --netuid {netuid} --wallet.name {wallet.name} --wallet.hotkey {wallet.hotkey_str}"
        else:
            fix = (
                f"btcli subnets register --netuid {netuid} --wallet {wallet.name} "
                f"--wallet-hotkey {wallet.hotkey_str} --network {network}"
            )
        raise WalletError(f"hotkey {wallet.hotkey.ss58_address} is not registered on netuid {netuid}: register it with `{fix}`")
    return uid
