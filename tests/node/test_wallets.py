"""Wallets: devnet wallets without prompts, and errors that name the fix."""

from __future__ import annotations

import pytest

from node.wallets import WalletError, create_devnet_wallet, open_wallet, require_registered
from chain.devnet import DevnetChain


def test_devnet_wallets_are_created_once_and_reused(tmp_path):
    first = create_devnet_wallet("miner1", "default", tmp_path)
    again = create_devnet_wallet("miner1", "default", tmp_path)
    assert first.hotkey.ss58_address == again.hotkey.ss58_address
    assert (tmp_path / "miner1" / "coldkeypub.txt").exists()
    opened = open_wallet("miner1", "default", str(tmp_path))
    assert opened.hotkey.ss58_address == first.hotkey.ss58_address


def test_missing_wallet_names_btcli_on_a_real_network(tmp_path):
    with pytest.raises(WalletError, match="btcli wallet create --wallet ghost --wallet-hotkey hk"):
        open_wallet("ghost", "hk", str(tmp_path), network="finney")


def test_missing_hotkey_names_devnet_register_on_the_devnet(tmp_path):
    create_devnet_wallet("cold", "default", tmp_path)
    with pytest.raises(WalletError, match="canopy devnet register --wallet.name cold --wallet.hotkey other"):
        open_wallet("cold", "other", str(tmp_path))


def test_corrupt_hotkey_file_is_reported_not_raised_raw(tmp_path):
    wallet = create_devnet_wallet("cold", "default", tmp_path)
    (tmp_path / "cold" / "hotkeys" / "default").write_text("garbage")
    with pytest.raises(WalletError, match="cannot be read"):
        open_wallet("cold", "default", str(tmp_path))
    assert wallet  # the original handle is unaffected


async def test_unregistered_hotkey_names_the_register_command(tmp_path):
    chain = DevnetChain(tmp_path / "c.sqlite", block_time=1.0)
    chain.ledger.create_subnet(1)
    wallet = create_devnet_wallet("cold", "hot", tmp_path / "w")
    with pytest.raises(WalletError, match="btcli subnets register --netuid 1 --wallet cold --wallet-hotkey hot --network test"):
        await require_registered(chain, wallet, 1, network="test")
    await chain.register(wallet, 1)
    assert await require_registered(chain, wallet, 1, network="devnet") == 0
