"""Sandbox: a chute's code inside bubblewrap, seeing nothing of the node but what it needs.

The seam between the node processes that run strangers' code (``miner.instances`` runs an
instance, the API inspects an uploaded bundle: ``inspection_sandbox``) and the kernel's
namespaces, through bubblewrap (``bwrap``, Debian package ``bubblewrap``, installed by
``./run.sh``). ``sandboxed(command, policy)`` wraps an instance's command line; the miner
then reaches the instance over a Unix socket it bound outside the sandbox, whose listening
fd the instance inherits (``miner.sandboxing``): the only way in, since the instance has a
network namespace of its own.

What the instance gets:

- **Files**: a fresh root with ``/usr`` (and the merged ``/bin``, ``/lib`` links) and the
  parts of ``/etc`` a program needs (``ETC``: names, resolver, libraries, certificates)
  read-only, the Python runtime (the base interpreter, the miner's virtualenv and
  the Canopy SDK) read-only, its bundle read-only as its working directory, a private
  writable scratch folder (its ``HOME``), a private ``/tmp``, a fresh ``/proc`` and a
  minimal ``/dev``. Nothing else of the host: not the wallets, not ``~/.bittensor``, not
  ``$CANOPY_HOME``, not the
  store, not the hosting file, not other instances' folders. One shared folder: the
  converted-model cache (``model_cache``), read-write like a Hugging Face cache, so the LLM
  template converts a model once per node (a chute could write into it; a model it altered
  would answer the validators' probes unlike the other hosts). Inside a user namespace as
  ``nobody`` (65534), files that only root may read stay unreadable.
- **Namespaces**: no further user namespace inside (``--disable-userns``: no
  unprivileged-namespace route to kernel attack surface such as nf_tables).
- **Processes**: its own PID namespace (it sees only its own processes: ``/proc/<miner
  pid>`` is not the miner), killed with the miner (``--die-with-parent``); no terminal (the
  miner starts bwrap in a session of its own); stopped by a SIGTERM to what runs inside
  (``miner.sandboxing``), since bubblewrap itself would take it down by SIGKILL.
- **Network**: its own network namespace with only a loopback of its own: no connection to
  the outside, to the miner's axon or to any port of the host. A chute that declares
  ``allow_external_egress`` (``policy.network == "egress"``) gets the internet through
  ``node.egress`` (slirp4netns), never the host's addresses; the miner's own pip builds
  (``"host"``) use the node's network, and run no package code.
- **More folders**, per policy: read-only ones (a chute's cached pip environment, a pinned
  chute's code: ``ref_root``), read-write ones (what a pip build fills), and the node's
  secrets that lie inside them masked by an empty tmpfs (``hidden_from_chutes``).
- **Environment**: cleared, then only what an instance needs (``PATH``, ``HOME``,
  ``CUDA_VISIBLE_DEVICES``, ``CANOPY_INSTANCE_ID`` ...): no secret of the miner's environment.
- **Devices**: the GPU device nodes of its own GPUs (and NVIDIA's control nodes) where the
  host has them, no others.
- **Caps**: memory and processes, from a cgroup of its own (``miner.limits``, applied by
  ``miner.sandboxing`` around this command).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

from loguru import logger

import canopy
from canopy.paths import canopy_home
from node.egress import resolv_conf

NOBODY = 65534
#: Environment variables an instance keeps from the miner's (none is a secret).
KEPT_ENV = ("LANG", "LC_ALL", "TZ", "CANOPY_DEBUG", "CANOPY_FAILED_EXIT_DELAY_S", "CANOPY_MODEL_CACHE")
_NVIDIA_CONTROL = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
#: What of the host's /etc an instance sees (read-only): names, resolver, libraries, certificates.
#: Not the rest: a miner run as root maps the sandbox's user to root for the files it is given,
#: so a whole /etc would hand it /etc/shadow and private keys.
ETC = ("passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "localtime", "timezone", "ld.so.cache",
       "ld.so.conf", "ld.so.conf.d", "ssl/certs", "ca-certificates", "ca-certificates.conf", "alternatives",
       "mime.types", "os-release")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; the message names the fix."""


@dataclass(frozen=True)
class SandboxPolicy:
    """One sandbox: its bundle (read-only, the working directory; None: ``chdir`` or the scratch
    folder), its scratch folder (read-write, HOME), its GPUs' indexes,
    more folders read-only (``readonly``: a chute's cached environment, a pinned chute's code)
    or read-write (``writable``: what a pip build fills), folders hidden behind an empty tmpfs
    (``masked``), and its network: ``none`` (its own loopback only), ``egress`` (the internet
    through ``node.egress``, never the host's addresses) or ``host`` (the node's network: only
    for the miner's own pip, which runs no package code)."""

    bundle: Path | None
    scratch: Path
    gpu_indexes: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    readonly: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    masked: tuple[Path, ...] = ()
    chdir: Path | None = None
    network: Literal["none", "egress", "host"] = "none"


def bwrap_path() -> str:
    """The bubblewrap binary, or SandboxUnavailable naming the fix."""
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap (./run.sh setup does), "
                                 "or run chutes unsandboxed with --chutes.runtime process")
    return found


def runtime_paths() -> list[Path]:
    """What the instance's Python needs, read-only: the base interpreter, the virtualenv, the SDK."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), Path(canopy.__file__).resolve().parent}
    return sorted(path for path in paths if path.exists() and not _under_system(path))


def _under_system(path: Path) -> bool:
    return path == Path("/usr") or Path("/usr") in path.parents


def _root_links() -> list[str]:
    """``/bin``, ``/lib``, ... as the host has them: links into ``/usr`` (merged /usr), else read-only binds."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib64", "lib32"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    return args


def _etc() -> list[str]:
    args: list[str] = []
    for name in ETC:
        path = Path("/etc") / name
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
    return args


def _gpu_nodes(indexes: Sequence[int]) -> list[str]:
    nodes = [f"/dev/nvidia{index}" for index in indexes] + list(_NVIDIA_CONTROL)
    args: list[str] = []
    for node in nodes:
        if Path(node).exists():
            args += ["--dev-bind", node, node]
    return args


def model_cache() -> Path:
    """The node's converted-model cache (``canopy.templates.model_files``), shared by the
    instances read-write like a Hugging Face cache: the LLM template converts a model once."""
    return Path(os.environ.get("CANOPY_MODEL_CACHE") or canopy_home() / "models").expanduser().resolve()


def environment(policy: SandboxPolicy) -> dict[str, str]:
    """The instance's whole environment (the miner's is cleared first)."""
    env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    env.update(PATH=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", HOME=str(policy.scratch),
               TMPDIR="/tmp", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", CANOPY_MODEL_CACHE=str(model_cache()))
    env.update(policy.env)
    return env


def sandboxed(command: Sequence[str], policy: SandboxPolicy) -> list[str]:
    """``command`` run inside the sandbox ``policy`` describes (see the module docstring). With
    ``network="egress"`` the result still needs ``node.egress.Egress.wrap`` and ``attach``."""
    network = ["--unshare-net"] if policy.network == "none" else []
    args = [bwrap_path(), "--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            *network, "--unshare-cgroup-try", "--uid", str(NOBODY), "--gid", str(NOBODY), "--die-with-parent",
            "--hostname", "chute", "--ro-bind", "/usr", "/usr", *_root_links(), *_etc(),
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--tmpfs", "/tmp"]
    if policy.network == "egress":
        args += ["--ro-bind", str(resolv_conf(policy.scratch.parent)), "/etc/resolv.conf"]
    for path in runtime_paths():
        args += ["--ro-bind", str(path), str(path)]
    models = model_cache()
    models.mkdir(parents=True, exist_ok=True)
    args += ["--bind", str(models), str(models)]
    for path in ([policy.bundle] if policy.bundle else []) + list(policy.readonly):
        args += ["--ro-bind", str(path), str(path)]
    for path in policy.masked:
        args += ["--tmpfs", str(path)]
    for path in [policy.scratch, *policy.writable]:
        args += ["--bind", str(path), str(path)]
    if policy.gpu_indexes:  # CUDA and NVML read the GPUs' PCI details there
        args += ["--ro-bind-try", "/sys", "/sys"]
    workdir = policy.bundle or policy.chdir or policy.scratch
    # the root bubblewrap built (a tmpfs with the mount points) read-only: writes land only in
    # the scratch folder, /tmp, /dev/shm and what ``writable`` names
    args += [*_gpu_nodes(policy.gpu_indexes), "--remount-ro", "/", "--chdir", str(workdir), "--clearenv"]
    for name, value in environment(policy).items():
        args += ["--setenv", name, value]
    return [*args, "--", *command]


def hidden_from_chutes(bound: Sequence[Path]) -> tuple[Path, ...]:
    """The node's secrets that lie inside a folder given to a sandbox (``$CANOPY_HOME``, the
    wallets, ``~/.ssh``...): each to be masked by an empty tmpfs."""
    home = Path.home()
    secrets = [canopy_home().expanduser().resolve(), home / ".bittensor", home / ".ssh", home / ".aws",
               home / ".config", home / ".cache" / "pip"]
    wallets = os.environ.get("BT_WALLET_PATH") or os.environ.get("CANOPY_WALLET_PATH")
    if wallets:
        secrets.append(Path(wallets).expanduser().resolve())
    inside = {secret for secret in secrets for folder in bound
              if secret.exists() and (secret == folder or folder in secret.parents)}
    return tuple(sorted(inside))


def ref_root(ref: str, cwd: Path) -> Path | None:
    """What of ``cwd`` a chute reference needs (a pinned chute's code, to bind read-only): a file
    ref's folder, a module ref's top-level package or module; None for a module the runtime has."""
    target = ref.split(":", 1)[0]
    if target.endswith(".py") or "/" in target:
        path = (cwd / target).resolve()
        return path.parent if path.is_file() else path if path.exists() else None
    top = target.split(".", 1)[0]
    for candidate in (cwd / top, cwd / f"{top}.py"):
        if candidate.exists():
            return candidate.resolve()
    return None


def inspection_sandbox() -> Callable[[list[str], Path], list[str]] | None:
    """A wrapper that runs ``canopy.inspect``'s child in the sandbox (for ``inspect_bundle(...,
    wrap=...)``): the unpacked bundle read-only, a scratch folder beside it, no network, no
    file of the node's. None (logged) where bubblewrap is missing: the inspection then runs
    as a plain child process with a scrubbed environment."""
    if shutil.which("bwrap") is None:
        logger.warning("bubblewrap is missing: uploaded chutes are inspected without a sandbox (apt-get install bubblewrap)")
        return None

    def wrap(command: list[str], folder: Path) -> list[str]:
        scratch = folder.parent / "scratch"
        scratch.mkdir(exist_ok=True)
        policy = SandboxPolicy(bundle=folder, scratch=scratch, env={"PYTHONPATH": str(folder), "PYTHONNOUSERSITE": "1"})
        return sandboxed(command, policy)

    return wrap
