"""One settings model for every neuron: flags, environment and an optional config file.

``load_settings`` builds a ``NeuronSettings`` from a command line. Flags follow the
bittensor convention that pm2 users already type (``--netuid``, ``--network``,
``--wallet.name``, ``--wallet.hotkey``, ``--wallet.path``, ``--axon.port``,
``--axon.external_ip``, ``--logging.debug``). Precedence, highest first: command-line flags,
``CANOPY_*`` environment variables (nested with ``__``, e.g. ``CANOPY_WALLET__NAME``), the
TOML file named by ``--config`` / ``CANOPY_CONFIG``, then the defaults below. Every value is
validated; a bad one ends the program with one line that names the flag and the fix.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from canopy.logging import LoggingSettings
from canopy.paths import canopy_home
from chain.options import DevnetSettings
from protocol.options import AxonSettings

#: Networks bittensor knows by name, and the devnet that Canopy embeds.
NAMED_NETWORKS = ("finney", "test", "local", "archive", "latent-lite", "devnet")
DEFAULT_BITTENSOR_WALLETS = "~/.bittensor/wallets"
_WS_URL = re.compile(r"^wss?://[^\s/]+(:\d+)?(/\S*)?$")
#: The ``--config`` file of the load in progress (flags are parsed after the sources run).
_CONFIG_FLAG: ContextVar[str | None] = ContextVar("canopy_config_flag", default=None)


def default_database_url(wallet_name: str = "default", hotkey: str = "default") -> str:
    """The SQLite WAL file a validator and its API share by default: $CANOPY_HOME/validator-<wallet>-<hotkey>.sqlite."""
    path = canopy_home() / f"validator-{wallet_name}-{hotkey}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{path}"


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the flag and the fix."""


class WalletSettings(BaseModel):
    name: str = Field("default", description="Coldkey (wallet) name, as in `btcli wallet create --wallet NAME`.")
    hotkey: str = Field("default", description="Hotkey name inside the wallet.")
    path: str | None = Field(
        None,
        description="Wallets folder. Default: ~/.bittensor/wallets on a real network, "
        "$CANOPY_HOME/wallets on the devnet.",
    )

    @field_validator("name", "hotkey")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or value in (".", ".."):
            raise ValueError("must be a plain name without '/' (e.g. 'miner1')")
        return value


class GravalSettings(BaseModel):
    backend: str = Field("auto", description="Prover backend: auto, torch-cuda, cupy, numpy or torch-cpu.")
    cpu_devices: int = Field(0, ge=0, le=8, description="CPU pseudo-devices to offer (devnet only; refused on real networks).")
    cpu_memory_mb: int = Field(64, ge=16, le=65536, description="Memory the CPU pseudo-device claims, in MiB.")
    session_ttl_s: float = Field(120.0, gt=0, description="How long a committed challenge waits for its opening.")
    reverify_s: float = Field(3600.0, gt=0,
                              description="Validator: mean seconds between two sweeps (every device of every miner re-verified at once; "
                                          "random exponential gaps).")
    retry_s: float = Field(60.0, gt=0,
                           description="Validator: first retry delay of a first verification that reached nobody (doubles); failed "
                                       "devices wait for the next sweep.")
    sweep_gather_s: float = Field(20.0, gt=0, le=300,
                                  description="Validator: a sweep gathers every miner's Inventory for this long, then sends every Prove "
                                              "at once (later answers fail late_for_sweep).")
    probation_s: float = Field(7 * 24 * 3600.0, ge=0,
                               description="Validator: after a failed device verification, how long a miner's new devices wait for the "
                                           "next sweep instead of being verified at once.")
    allow_cpu: bool = Field(False, description="Validator: accept CPU pseudo-devices (devnet only).")


class ChutesSettings(BaseModel):
    """Miner: which chutes to host (``--chutes.config``) and how their instances run."""

    config: str | None = Field(None, description="Miner: TOML file of the chutes to host ([[chutes]] ref = ..., instances = N).")
    port_min: int = Field(19000, ge=1024, le=65535, description="Miner: lowest local port for chute instances.")
    port_max: int = Field(19999, ge=1024, le=65535, description="Miner: highest local port for chute instances.")
    start_timeout_s: float = Field(900.0, gt=0, description="Miner: how long an instance may take to become ready.")
    health_interval_s: float = Field(5.0, gt=0, description="Miner: seconds between health checks of a ready instance.")
    invoke_timeout_s: float = Field(600.0, gt=0, description="Miner: longest an Invoke may run on an instance.")
    max_payload_bytes: int = Field(1 << 20, ge=1,
                                   description="Miner: largest Invoke payload (JSON bytes); --axon.max_body_bytes also caps it.")
    shutdown_grace_s: float = Field(10.0, ge=0, description="Miner: seconds instances get to exit after SIGTERM before SIGKILL.")
    log_dir: str | None = Field(None, description="Miner: folder of the instances' stdout/stderr logs (default: $CANOPY_HOME/logs).")
    runtime: Literal["process", "sandbox", "container"] = Field(
        "sandbox", description="Miner: how chute instances run: sandbox (bubblewrap: no file of the miner's, no network "
                               "unless the chute allows external egress and then never the miner's ports, memory and "
                               "process caps), container (registry chutes in their own image, built with Podman or "
                               "Docker: every Image step honoured; pinned chutes sandboxed) or process (the miner's "
                               "own user, files and network).")
    container_engine: Literal["podman", "docker"] | None = Field(
        None, description="Miner: the engine of --chutes.runtime container (default: the first of podman, docker that answers).")
    environment_dir: str | None = Field(None, description="Miner: folder of the chutes' cached pip environments, one per "
                                                          "image (default: $CANOPY_HOME/environments).")
    pip_index_url: str | None = Field(None, description="Miner: package index the chutes' pip installs come from "
                                                        "(default: pip's own configuration, PIP_INDEX_URL or PyPI).")
    instance_memory_mb: int = Field(8192, ge=64, description="Miner: memory cap of a sandboxed instance (MiB; past it the "
                                                               "kernel kills it and it restarts).")
    instance_max_pids: int = Field(512, ge=16, description="Miner: most processes and threads a sandboxed instance may run.")
    autoscale: bool = Field(True, description="Miner: host registry chutes by the demand validators announce (off: the hosting file only).")
    autoscale_interval_s: float = Field(2.0, gt=0, le=600, description="Miner: seconds between two autoscaler decisions.")
    bundle_dir: str | None = Field(None, description="Miner: folder of the verified chute bundles (default: $CANOPY_HOME/bundles).")
    announce_ttl_s: float = Field(120.0, gt=0, description="Miner: seconds a validator's announcement counts after it arrived.")
    cpu_device_slots: int = Field(8, ge=1, le=256, description="Miner: instances one CPU pseudo-device (devnet) may hold at once.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Miner: serve Prometheus /metrics (autoscaler decisions, "
                                                             "instances) on this port (0: off).")
    metrics_ip: str = Field("127.0.0.1", description="Miner: interface the /metrics server binds to.")
    drain_timeout_s: float = Field(60.0, ge=0, description="Miner: longest a replaced or stopped instance keeps its in-flight calls.")

    @model_validator(mode="after")
    def _port_range(self) -> "ChutesSettings":
        if self.port_max < self.port_min:
            raise ValueError(f"the instance port range is empty: port_max {self.port_max} < port_min {self.port_min}")
        return self


WEEK_S = 7 * 24 * 3600.0
#: The scoring formula's parts, in the order of the README's formula (validator/scoring.py).
COMPONENTS = ("capacity", "compute", "invocations", "chutes", "availability", "latency")


class ScoringSettings(BaseModel):
    """Validator: the scoring formula's knobs (``--scoring.*``; the weights are normalised by their sum)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(WEEK_S, gt=0, description="Rolling window the caller aggregates over (seconds).")
    ema_alpha: float = Field(0.1, gt=0, le=1, description="EMA weight of the newest step; 1 = no smoothing.")
    weight_capacity: float = Field(0.35, ge=0, description="Verified compute capacity (Σ multipliers).")
    weight_compute: float = Field(0.25, ge=0, description="Compute served (seconds × multiplier).")
    weight_invocations: float = Field(0.10, ge=0, description="Successful invocations.")
    weight_chutes: float = Field(0.10, ge=0, description="Unique chutes served.")
    weight_availability: float = Field(0.10, ge=0, description="Share of successful synthetic calls.")
    weight_latency: float = Field(0.10, ge=0, description="Latency quality vs other miners of the same chute.")
    flag_penalty: float = Field(2.0, ge=0, description="Score lost per flagged/synthetic share (2: half flagged = 0).")
    untested_availability: float = Field(1.0, ge=0, le=1, description="Availability with no synthetic call yet.")

    @model_validator(mode="after")
    def _finite_and_positive(self) -> "ScoringSettings":
        values = [getattr(self, f"weight_{name}") for name in COMPONENTS]
        if not all(math.isfinite(v) for v in [*values, self.flag_penalty, self.window_s]):
            raise ValueError("scoring weights, flag_penalty and window_s must be finite")
        if sum(values) <= 0:
            raise ValueError("at least one scoring weight must be positive")
        return self

    def weights(self) -> dict[str, float]:
        return {name: getattr(self, f"weight_{name}") for name in COMPONENTS}


class ValidatorSettings(BaseModel):
    """Validator: the loop's cadence and budgets (``--validator.*``)."""

    model_config = ConfigDict(extra="forbid")

    step_s: float = Field(12.0, gt=0, le=3600, description="Seconds between the starts of two validator steps.")
    sync_blocks: int = Field(5, ge=1, description="Re-read the metagraph every this many blocks.")
    inventory_timeout_s: float = Field(10.0, gt=0, description="How long a miner has to answer Inventory.")
    max_concurrent_verifications: int = Field(16, ge=1,
                                              description="Miners in a first GraVal verification at the same time (a sweep starts every "
                                                          "miner at once).")
    device_info_interval_s: float = Field(300.0, gt=0, description="Mean seconds between live device-info checks of a verified miner.")
    synthetic_interval_s: float = Field(300.0, gt=0, description="Mean seconds between two rounds of synthetic calls to one miner.")
    synthetic_timeout_s: float = Field(60.0, gt=0, description="Longest a synthetic call may take.")
    synthetic_max_tokens: int = Field(32, ge=1, le=4096, description="max_tokens of the synthetic LLM prompts (greedy).")
    max_concurrent_synthetic: int = Field(64, ge=1, description="Synthetic calls in flight at once.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Serve Prometheus /metrics on this port (0: off).")
    metrics_ip: str = Field("127.0.0.1", description="Interface the /metrics server binds to.")
    weights_retry_blocks: int = Field(2, ge=1, description="First wait (blocks) after a failed set_weights; doubles, capped at the tempo.")
    top_miners_logged: int = Field(5, ge=1, description="Miners named in the weights log line.")
    announce_s: float = Field(5.0, gt=0, le=3600, description="Seconds between two announcements of the chute registry to miners.")
    demand_window_s: float = Field(300.0, gt=0, le=86400, description="Window of the demand announced per chute (calls, refusals).")
    history_every_steps: int = Field(25, ge=1,
                                     description="Append the scores to score_history every this many steps (the current scores are saved "
                                                 "every step).")


class WandbSettings(BaseModel):
    """Validator: the wandb run of scores per step (``--wandb.*``); offline unless you log in and pick online."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["online", "offline", "disabled"] = Field(
        "offline", description="online, offline (default; `wandb sync` later) or disabled.")
    project: str = Field("canopy-validator", min_length=1, description="wandb project of the run.")
    entity: str | None = Field(None, description="wandb entity (team or user); default: yours.")
    dir: str | None = Field(None, description="Where the run files go (default: $CANOPY_HOME/wandb).")


_RATE_RULE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)?\s*(s|m|h|d)\s*$")
_RATE_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate_rule(text: str) -> tuple[int, int] | None:
    """"10/60s", "100/1h", "5/m" -> (limit, window seconds); None unless both are positive.
    The one parser of rate-limit rules: ``--api.rate_limit`` and ``api.keys.RateRule``."""
    match = _RATE_RULE.match(text)
    if not match:
        return None
    limit, window = int(match.group(1)), int(match.group(2) or 1) * _RATE_UNIT_S[match.group(3)]
    return (limit, window) if limit > 0 and window > 0 else None


class ApiSettings(BaseModel):
    """API: the public gateway's knobs (``--api.*``, or ``CANOPY_API__*``)."""

    model_config = ConfigDict(extra="forbid")

    rate_limit: str = Field("600/60s", description="Rate-limit rules every key gets, comma-separated N/Ws (e.g. 600/60s,10000/1d).")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Longest a miner call may take.")
    race: int = Field(1, ge=1, le=16, description="Miners raced per request by default (first with content wins).")
    max_race: int = Field(4, ge=1, le=16, description="Most miners a request may race (x-canopy-race).")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body, in bytes (413 past it).")
    log_prompts: bool = Field(False, description="Keep prompts and answers in the request log.")
    refresh_s: float = Field(5.0, gt=0, le=600, description="Seconds between refreshes of which miners serve what.")
    log_retention_days: float = Field(30.0, ge=0, description="Days request logs are kept (pruned hourly); 0 keeps them.")
    idempotency_ttl_s: float = Field(86400.0, gt=0, description="Seconds an Idempotency-Key's answer is replayed.")
    cold_start_wait_s: float = Field(30.0, ge=0, le=600,
                                     description="How long a call of a chute nobody hosts waits for an instance (then 503 no_capacity).")
    chute_domain: str | None = Field(None, description="Also serve each chute at https://OWNER-NAME.<this domain>{public_api_path}.")
    moderation_blocklist: str | None = Field(
        None, description="File of blocked words/phrases (one a line, # comments); flagged inputs get 400.")
    moderation_openai_key: SecretStr | None = Field(
        None, description="OpenAI key: check inputs with OpenAI's moderation endpoint (never logged).")
    moderation_openai_url: str = Field("https://api.openai.com/v1", description="Base URL of the moderation API.")
    moderation_fail_closed: bool = Field(
        False, description="Refuse (503) when the moderation API fails, instead of allowing (fail open).")

    @field_validator("rate_limit")
    @classmethod
    def _rules(cls, value: str) -> str:
        rules = [rule for rule in value.split(",") if rule.strip()]
        for rule in rules:
            if parse_rate_rule(rule) is None:
                raise ValueError(f"rate limit {rule.strip()!r} is not N/Ws (e.g. 600/60s, 100/1h, 5/m)")
        return ",".join(rule.strip() for rule in rules)

    @model_validator(mode="after")
    def _race_within_max(self) -> "ApiSettings":
        if self.race > self.max_race:
            raise ValueError(f"--api.race {self.race} exceeds --api.max_race {self.max_race}")
        return self


class NeuronSettings(BaseSettings):
    """Settings shared by the miner, the validator and the API."""

    model_config = SettingsConfigDict(
        env_prefix="CANOPY_",
        env_nested_delimiter="__",
        cli_implicit_flags=True,
        cli_avoid_json=True,
        extra="forbid",
        validate_default=True,
    )

    netuid: int = Field(1, ge=0, le=65535, description="The subnet's uid.")
    network: str = Field(
        "devnet",
        description="finney | test | local | archive | devnet (the embedded local chain) | ws://host:port.",
    )
    wallet: WalletSettings = Field(default_factory=WalletSettings)
    axon: AxonSettings = Field(default_factory=AxonSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    devnet: DevnetSettings = Field(default_factory=DevnetSettings)
    graval: GravalSettings = Field(default_factory=GravalSettings)
    chutes: ChutesSettings = Field(default_factory=ChutesSettings)
    validator: ValidatorSettings = Field(default_factory=ValidatorSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    wandb: WandbSettings = Field(default_factory=WandbSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    redis_url: str | None = Field(None, description="redis://host:port/db shared by replicas (nonces, rate limits).")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the validator/API store (default: sqlite in $CANOPY_HOME/<wallet>.sqlite)."
    )
    config: str | None = Field(None, description="A TOML file with any of these settings (flags override it).")

    @field_validator("network")
    @classmethod
    def _known_network(cls, value: str) -> str:
        if value in NAMED_NETWORKS or _WS_URL.match(value):
            return value
        raise ValueError(f"unknown network {value!r}: use one of {', '.join(NAMED_NETWORKS)} or a ws://host:port URL")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _fill_network_defaults(self) -> "NeuronSettings":
        if self.wallet.path is None:
            self.wallet.path = (
                str(canopy_home() / "wallets") if self.is_devnet else DEFAULT_BITTENSOR_WALLETS
            )
        if self.devnet.path is None:
            self.devnet.path = str(canopy_home() / "devnet.sqlite")
        if (self.graval.cpu_devices or self.graval.allow_cpu) and not self.is_devnet:
            raise ValueError("--graval.cpu_devices and --graval.allow_cpu are for the devnet only: "
                             "a CPU pseudo-device never earns on a real network")
        if self.axon.external_ip is None and self.is_devnet:
            self.axon.external_ip = "127.0.0.1"
        return self

    def store_url(self) -> str:
        """``--database_url``, else the SQLite file the validator and the API of this wallet share."""
        if self.database_url:
            return self.database_url
        return default_database_url(self.wallet.name, self.wallet.hotkey)

    @property
    def is_devnet(self) -> bool:
        return self.network == "devnet"

    @property
    def published_ip(self) -> str:
        return self.axon.external_ip or self.axon.ip

    @property
    def published_port(self) -> int:
        return self.axon.external_port or self.axon.port

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls))


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by ``--config``, else by the CANOPY_CONFIG variable."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.path = _CONFIG_FLAG.get() or os.environ.get("CANOPY_CONFIG")

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return read_config_file(self.path) if self.path else {}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML settings file; raise ConfigError naming the file on any problem."""
    file = Path(path).expanduser()
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist: fix --config / CANOPY_CONFIG") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {file} is not valid TOML: {error}") from None


def _flag_name(loc: Sequence[Any]) -> str:
    return "--" + ".".join(str(part) for part in loc if not isinstance(part, int))


def describe_validation_error(error: ValidationError) -> str:
    """One line per wrong setting, named as the flag a user types."""
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "is not a known setting (see --help)"
        lines.append(f"{_flag_name(problem['loc'])}: {message}" if problem["loc"] else message)
    return "; ".join(lines)


def load_settings(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "canopy",
    settings_cls: type[NeuronSettings] = NeuronSettings,
    **overrides: Any,
) -> NeuronSettings:
    """Build settings from flags (``argv``; None reads none), env and the config file.

    Raises ConfigError with a readable message on a bad value; ``--help`` prints the
    flags and exits 0 as argparse does.
    """
    args = list(argv) if argv is not None else []
    token = _CONFIG_FLAG.set(_peek_config_flag(args))
    try:
        if argv is None:
            return settings_cls(**overrides)
        return settings_cls(_cli_parse_args=args, _cli_prog_name=prog, **overrides)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None
    finally:
        _CONFIG_FLAG.reset(token)


def _peek_config_flag(args: Sequence[str]) -> str | None:
    for index, arg in enumerate(args):
        if arg == "--config" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def load_settings_or_exit(argv: Sequence[str] | None = None, *, prog: str = "canopy", **overrides: Any) -> NeuronSettings:
    """``load_settings`` for entry points: a bad setting prints one line and exits 2."""
    try:
        return load_settings(argv, prog=prog, **overrides)
    except ConfigError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


