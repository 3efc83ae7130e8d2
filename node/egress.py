"""Egress: a sandbox that may reach the internet and still never the node's own ports.

The seam between ``node.sandbox`` (a chute declaring ``allow_external_egress=True``) and two
Debian tools, util-linux ``unshare`` and ``slirp4netns`` (installed by ``./run.sh``):

1. ``wrap(command)`` puts the sandbox's command (bwrap, run *without* ``--unshare-net``)
   behind ``unshare --user --map-root-user --net``: a network namespace of its own, owned by
   a user namespace in which the setup script below is root;
2. the miner starts it and calls ``attach(pid)``: ``slirp4netns`` gives that namespace a
   ``tap0`` with a user-mode NAT to the outside (DNS at 10.0.2.3), with
   ``--disable-host-loopback`` (10.0.2.2 does not lead to the host's 127.0.0.1);
3. the setup script then adds ``prohibit`` routes for every address of the host (its public
   addresses too: a service bound to 0.0.0.0 would otherwise be one hop away) and for the
   private, shared, link-local (cloud metadata at 169.254.169.254) and loopback ranges
   (``PROHIBITED``), and only then execs bwrap, which enters a nested user namespace without
   capabilities: the chute cannot change those routes.

So the chute reaches public addresses through slirp4netns, and gets "permission denied" for the
host's addresses and private networks; its own ``127.0.0.1`` is its own. ``close()`` ends
slirp4netns (it also ends by itself when the namespace's last process exits).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
from pathlib import Path
from typing import Sequence

from loguru import logger

#: Never reachable from an egress sandbox (besides every address of the host): loopback,
#: private (RFC 1918), shared (RFC 6598), link-local (cloud metadata) and multicast.
PROHIBITED = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
              "224.0.0.0/4", "0.0.0.0/8")
SLIRP_DNS = "10.0.2.3"
#: where the egress tools are looked for (the system's folders, whatever the PATH)
TOOL_FOLDERS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
#: the PATH of the node's own tools when they run for a sandbox (never a chute's or a caller's)
SYSTEM_PATH = ":".join(TOOL_FOLDERS)
ATTACH_TIMEOUT_S = 10.0
# bash (dash takes only one-digit fds): $1 the fd that says the namespace exists, $2 the fd to
# wait on until slirp4netns is up, both closed before the sandbox runs; $3 the ip binary, $4
# the prohibit routes (space-separated); then the sandbox's own command
_SETUP = ('set -e; up=$1 go=$2; echo up >&"$up"; read -r _ <&"$go"; exec {up}>&- {go}<&-; '
          'for net in $4; do "$3" route add prohibit "$net"; done; shift 4; exec "$@"')


class EgressUnavailable(RuntimeError):
    """slirp4netns or unshare is missing; the message names the fix."""


def host_addresses() -> list[str]:
    """Every IPv4 address of this host's interfaces (``ip -j -4 addr``), as /32 networks;
    EgressUnavailable when ``ip`` cannot tell (an egress sandbox is not made blind)."""
    try:
        answer = subprocess.run([tool("ip"), "-j", "-4", "addr"], capture_output=True, text=True, timeout=5,
                                env={"PATH": SYSTEM_PATH})
        links = json.loads(answer.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        raise EgressUnavailable(f"cannot list this host's addresses with `ip -j -4 addr`: {error}") from None
    return sorted({f"{info['local']}/32" for link in links for info in link.get("addr_info", []) if "local" in info})


def prohibited_networks(extra: Sequence[str] = ()) -> list[str]:
    """``PROHIBITED``, the host's own addresses outside those ranges, and ``extra`` addresses
    (the miner's public address behind a NAT, on no interface of the host), deduplicated."""
    ranges = [ipaddress.IPv4Network(net) for net in PROHIBITED]
    own = [*host_addresses(), *(f"{ipaddress.IPv4Address(address)}/32" for address in extra)]
    outside = sorted({net for net in own if not any(ipaddress.IPv4Network(net).subnet_of(r) for r in ranges)})
    return [*PROHIBITED, *outside]


def tool(name: str) -> str:
    """The absolute path of a system tool (never one found through a chute's or a caller's PATH)."""
    for folder in TOOL_FOLDERS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise EgressUnavailable(f"{name} is missing: chutes with allow_external_egress need it "
                            f"(apt-get install slirp4netns util-linux iproute2; ./run.sh setup does)")


def check_available() -> None:
    """EgressUnavailable naming the fix unless slirp4netns, unshare, ip and bash are installed."""
    for name in ("slirp4netns", "unshare", "ip", "bash"):
        tool(name)


def resolv_conf(folder: Path) -> Path:
    """A resolv.conf naming slirp4netns's DNS (the host's resolver may be on its loopback)."""
    path = folder / "egress-resolv.conf"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(f"nameserver {SLIRP_DNS}\n")
    return path


class Egress:
    """One sandbox's way out (see the module docstring); ``pass_fds`` go to its Popen."""

    def __init__(self, extra_prohibited: Sequence[str] = ()) -> None:
        check_available()
        self.prohibited = prohibited_networks(extra_prohibited)
        self._up_read, self._up_write = os.pipe()
        self._go_read, self._go_write = os.pipe()
        self._open = {self._up_read, self._up_write, self._go_read, self._go_write}
        self.slirp: subprocess.Popen[bytes] | None = None

    @property
    def pass_fds(self) -> tuple[int, int]:
        return (self._up_write, self._go_read)

    def wrap(self, command: list[str]) -> list[str]:
        """``command`` in a network namespace that ``attach`` then connects to the outside."""
        return [tool("unshare"), "--user", "--map-root-user", "--net", "--", tool("bash"), "-c", _SETUP, "canopy-egress",
                str(self._up_write), str(self._go_read), tool("ip"), " ".join(self.prohibited), *command]

    async def attach(self, pid: int) -> None:
        """Once the process ``pid`` (``wrap``'s, started) has its namespace: start slirp4netns
        on it and let the setup go on. RuntimeError if the namespace never came up."""
        self._close(*self.pass_fds)
        loop = asyncio.get_running_loop()
        up = await asyncio.wait_for(loop.run_in_executor(None, os.read, self._up_read, 16), ATTACH_TIMEOUT_S)
        if not up:
            raise RuntimeError("the sandbox exited before its network namespace was up")
        ready_read, ready_write = os.pipe()
        try:  # Popen, as for instances (miner.processes.ChildProcess), not the loop's subprocess support
            self.slirp = subprocess.Popen(
                [tool("slirp4netns"), "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox",
                 "--enable-seccomp", "--ready-fd", str(ready_write), f"--userns-path=/proc/{pid}/ns/user", str(pid),
                 "tap0"], pass_fds=(ready_write,), env={"PATH": SYSTEM_PATH}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            os.close(ready_write)
            ready = await asyncio.wait_for(loop.run_in_executor(None, os.read, ready_read, 1), ATTACH_TIMEOUT_S)
        finally:
            os.close(ready_read)
        if ready != b"1":
            exited = self.slirp.poll() is not None
            error = self.slirp.stderr.read() if exited and self.slirp.stderr is not None else b""
            raise RuntimeError(f"slirp4netns did not come up: {error.decode(errors='replace').strip() or 'no reason'}")
        os.write(self._go_write, b"go\n")
        self._close(self._up_read, self._go_write)
        logger.debug("egress for pid {} up through slirp4netns (pid {})", pid, self.slirp.pid)

    def _close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self._open:
                self._open.discard(fd)
                os.close(fd)

    async def close(self) -> None:
        """End slirp4netns (if the sandbox did not take it with it) and close what is left open."""
        self._close(*list(self._open))
        if self.slirp is not None and self.slirp.poll() is None:
            self.slirp.terminate()
            try:
                await asyncio.to_thread(self.slirp.wait, 5)
            except subprocess.TimeoutExpired:
                self.slirp.kill()
                await asyncio.to_thread(self.slirp.wait)
        if self.slirp is not None and self.slirp.stderr is not None:
            self.slirp.stderr.close()
