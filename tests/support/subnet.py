"""A whole subnet in tests, as operators and authors run it: devnet, miners, validator, API.

``DeployNet`` starts, on a fresh devnet in the test's folder, the miners (``python -m
neurons.miner``, each with its own CPU pseudo-devices and, unless given one, no hosting
file), the validator process and the API process sharing one SQLite store, with short
cadences (announcements every second, steps every 2 s). Chute authors act through the real
CLI (``canopy deploy``, ``canopy chutes``, ``canopy warmup``: ``cli``) and callers through
HTTP (``call``); ``inventories`` is what the miners say they host.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from api.keys import KeyStore
from chain.devnet import DevnetLedger
from node.wallets import coldkey_ss58, create_devnet_wallet
from protocol.chutes import HostedChute
from protocol.dendrite import Dendrite
from protocol.graval.synapses import Inventory, InventoryResponse
from store.queries import ValidatorStore
from tests.support import ROOT, free_port
from tests.support.neurons import finish, start_neuron
from tests.support.store import sqlite_url

NETUID = 1


@dataclass
class DeployNet:
    home: Path
    miners: dict[str, int] = field(default_factory=dict)  # name -> CPU pseudo-devices
    miner_flags: dict[str, list[str]] = field(default_factory=dict)  # extra flags per miner
    api_flags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ledger = DevnetLedger(self.home / "devnet.sqlite", block_time=1.0)
        self.ledger.create_subnet(NETUID, tempo=6, weights_rate_limit=2, stake_threshold=100)
        self.database = self.home / "store.sqlite"
        self.url = sqlite_url(self.database)
        self.api_url = f"http://127.0.0.1:{free_port()}"
        self.processes: dict[str, subprocess.Popen] = {}
        self.hotkeys: dict[str, str] = {}
        self.uids: dict[str, int] = {}
        self.keys: dict[str, str] = {}

    # --- processes -----------------------------------------------------------------------

    def _wallet_flags(self, name: str, hotkey: str = "default") -> list[str]:
        return ["--network", "devnet", "--devnet.path", str(self.ledger.path), "--netuid", str(NETUID),
                "--wallet.name", name, "--wallet.hotkey", hotkey]

    async def start(self, *, miners_first: bool = True) -> "DeployNet":
        wallets = self.home / "wallets"
        owner = create_devnet_wallet("owner", "validator", wallets)
        self.ledger.register(NETUID, owner.hotkey.ss58_address, coldkey_ss58(owner))
        self.ledger.add_stake(NETUID, owner.hotkey.ss58_address, 1000)
        for name in self.miners:
            wallet = create_devnet_wallet(name, "default", wallets)
            self.ledger.register(NETUID, wallet.hotkey.ss58_address, coldkey_ss58(wallet))
            self.hotkeys[name] = wallet.hotkey.ss58_address
        graph = self.ledger.metagraph(NETUID)
        self.uids = {name: graph.by_hotkey(hotkey).uid for name, hotkey in self.hotkeys.items()}
        store = await ValidatorStore.open(self.url)  # the schema, before three processes open it
        await store.close()
        for name, devices in self.miners.items():
            self.processes[name] = start_neuron(
                "miner", self.home, *self._wallet_flags(name), "--axon.ip", "127.0.0.1", "--axon.port", str(free_port()),
                "--graval.cpu_devices", str(devices), "--graval.cpu_memory_mb", "16",
                "--chutes.port_min", "20000", "--chutes.port_max", "29999", "--chutes.autoscale_interval_s", "1",
                "--chutes.log_dir", str(self.home / "logs"), *self.miner_flags.get(name, []))
        deadline = time.monotonic() + 90
        while len(self.ledger.metagraph(NETUID).serving_miners()) < len(self.miners):
            self.check_alive()
            assert time.monotonic() < deadline, "the miners did not serve their axons within 90 s"
            await asyncio.sleep(0.5)
        self.processes["validator"] = start_neuron(
            "validator", self.home, *self._wallet_flags("owner", "validator"), "--graval.allow_cpu",
            "--database_url", self.url, "--validator.step_s", "2", "--validator.announce_s", "1",
            "--validator.synthetic_interval_s", "4", "--validator.synthetic_timeout_s", "20",
            "--validator.history_every_steps", "1", "--wandb.mode", "disabled")
        self.processes["api"] = start_neuron(
            "api", self.home, *self._wallet_flags("owner", "validator"), "--axon.ip", "127.0.0.1",
            "--axon.port", self.api_url.rsplit(":", 1)[1], "--database_url", self.url, "--api.refresh_s", "1",
            *self.api_flags)
        await self.wait_http(f"{self.api_url}/health", 60)
        return self

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with code {process.returncode}:\n{finish(process)[1][-4000:]}")

    def stop(self) -> dict[str, tuple[int, str]]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        return {name: finish(process, timeout=40) for name, process in self.processes.items()}

    async def wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    async with session.get(url) as response:
                        if response.status < 500:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.3)
        raise AssertionError(f"{url} did not answer within {timeout:.0f}s")

    # --- keys, the CLI, calls ----------------------------------------------------------------

    async def key(self, name: str, *, owner: str | None, scopes: tuple[str, ...] = ("invoke", "deploy"),
                  credits: float = 100_000) -> str:
        store = await ValidatorStore.open(self.url)
        try:
            _, key = await KeyStore(store.engine).create(name, credits=credits, owner=owner, scopes=list(scopes))
        finally:
            await store.close()
        self.keys[name] = key
        return key

    def cli(self, *args: str, key: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """``canopy ARGS`` as an author runs it (CANOPY_API_URL and CANOPY_API_KEY set)."""
        env = {**os.environ, "CANOPY_API_URL": self.api_url, "CANOPY_API_KEY": key, "CANOPY_HOME": str(self.home),
               "COLUMNS": "200"}
        return subprocess.run([sys.executable, "-m", "canopy.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)

    async def call(self, session: aiohttp.ClientSession, path: str, payload: Any = None, *, key: str,
                   method: str = "POST") -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body or text, headers) of ``METHOD {api}{path}``."""
        async with session.request(method, self.api_url + path, json=payload,
                                   headers={"Authorization": f"Bearer {key}"}) as response:
            text = await response.text()
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            return response.status, body, dict(response.headers)

    async def until(self, what: str, check, timeout: float, pause: float = 0.5) -> Any:
        """Poll the coroutine function ``check`` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            value = await check()
            if value:
                return value
            await asyncio.sleep(pause)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    async def inventories(self, *names: str) -> dict[str, list[HostedChute]]:
        """name -> the chutes miner ``name``'s Inventory lists (asked with the validator's hotkey;
        [] when it does not answer)."""
        wallet = create_devnet_wallet("owner", "validator", self.home / "wallets")
        graph = self.ledger.metagraph(NETUID)
        async with Dendrite(wallet) as dendrite:
            answers = await dendrite.query([graph.by_hotkey(self.hotkeys[name]) for name in names], Inventory(), timeout=10)
        return {name: list(answer.response.chutes) if isinstance(answer.response, InventoryResponse) else []
                for name, answer in zip(names, answers)}

    async def store(self) -> ValidatorStore:
        return await ValidatorStore.open(self.url)
