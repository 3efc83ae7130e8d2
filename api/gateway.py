"""The gateway's parts and the seams they plug into, typed: ``Gateway`` is the app's state.

Seam: between ``api.app.build_app`` (which is handed the parts) and everything that reads
them (``api.admission``, the routes, the middleware). Each injected part is a
``typing.Protocol`` naming every call the gateway makes on it, optional ones included, so a
stand-in (a test's fake, Redis instead of memory) is checked by the type checker rather
than probed at run time: ``RateLimiter`` (``api.limits``), ``Directory``
(``api.directory.MinerDirectory``), ``Caller`` (``api.upstream.Upstream``), ``Store`` (the
validator's ``store.queries.ValidatorStore``) and ``Moderator`` (``api.moderation``). The
parts the gateway makes itself (request log, credit ledger, idempotency store, metrics, the
chute registry on the store's engine) are built here from the knobs (``ApiConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping, Protocol, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import State
from starlette.requests import HTTPConnection

from api.credits import CreditLedger
from api.directory import CHAT_PATH, Route
from api.idempotency import IdempotencyStore
from api.keys import KeyStore, RateRule
from api.limits import Decision
from api.moderation import Moderator
from api.requestlog import RequestLogger
from chain.base import Metagraph
from store.registry import ChuteRecord, ChuteRegistry
from store.tables import DeviceOwner, DeviceVerification, WeightSubmission

if TYPE_CHECKING:
    from api.upstream import Call

DEFAULT_MAX_BODY_BYTES = 1 << 20


@dataclass
class ApiConfig:
    """The gateway's knobs (``neurons/api.py`` reads them from ``CANOPY_API_*``)."""

    global_rate_limits: tuple[RateRule, ...] = (RateRule(600, 60),)
    request_timeout_s: float = 60.0
    race: int = 1
    max_race: int = 4
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_prompts: bool = False
    idempotency_ttl_s: float = 24 * 3600.0
    cold_start_wait_s: float = 30.0  # how long a call of a chute nobody hosts yet waits (then 503 no_capacity)
    chute_domain: str | None = None  # chutes also served at OWNER-NAME.<chute_domain>


class RateLimiter(Protocol):
    async def check(self, subject: str, rules: Sequence[RateRule], now: float | None = None) -> Decision: ...

    async def close(self) -> None: ...


class Directory(Protocol):
    """Who serves which model and chute (``refresh`` keeps ``routes``, ``graph`` and the registry's
    chutes current), and the load."""

    routes: list[Route]
    graph: Metagraph | None
    refreshed_at: float
    in_flight: dict[tuple[str, str], int]

    def models(self, allowed: Callable[[str], bool] | None = None) -> list[str]: ...

    def known_model(self, model: str) -> bool: ...

    def candidates(self, model: str, strategy: str = "default", path: str = CHAT_PATH) -> list[Route]: ...

    def chute(self, owner: str, name: str) -> ChuteRecord | None: ...

    def chute_by_id(self, chute_id: str) -> ChuteRecord | None: ...

    def chute_by_host(self, label: str) -> ChuteRecord | None: ...

    def registered(self, record: ChuteRecord) -> None: ...

    def unregistered(self, chute_id: str) -> None: ...

    def chute_candidates(self, chute_id: str, strategy: str = "default") -> list[Route]: ...

    def instances(self, chute_id: str) -> int: ...

    async def wait_for_capacity(self, chute_id: str, timeout_s: float, strategy: str = "default") -> list[Route]: ...

    def acquire(self, route: Route) -> None: ...

    def release(self, route: Route) -> None: ...


class Caller(Protocol):
    """The upstream: calls to miners (race, failover) and their organic invocation rows."""

    async def open(self, routes: Sequence[Route], path: str, payload: Any, *, stream: bool, race: int = 1,
                   timeout_s: float | None = None, tried: list[int] | None = None, steered: bool = True,
                   method: str = "POST") -> Call: ...

    async def drain(self) -> None: ...


class Store(Protocol):
    """What the gateway reads from and writes to the validator's store (and its ``engine``: the
    chute registry's, ``store.registry``)."""

    engine: AsyncEngine

    async def record_invocations(self, rows: Iterable[Mapping[str, Any]]) -> int: ...

    async def load_scores(self) -> tuple[dict[str, float], int]: ...

    async def latest_verifications(self) -> dict[tuple[str, str], DeviceVerification]: ...

    async def device_owners(self) -> dict[str, DeviceOwner]: ...

    async def last_weights(self) -> WeightSubmission | None: ...

    async def flagged_since(self, since: float) -> set[tuple[str, str]]: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("canopy_api_requests", "API requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("canopy_api_request_seconds", "API request latency (to the last byte)", ["route"],
                                 registry=self.registry)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)


class Gateway(State):
    """Every part a route reads, typed. ``build_app`` makes one the app's ``state`` (so
    ``app.state.request_log`` still reads), and code reads it through ``gateway_of``."""

    keys: KeyStore
    limiter: RateLimiter
    directory: Directory
    upstream: Caller
    store: Store
    config: ApiConfig
    moderator: Moderator | None
    health: Callable[[], Awaitable[dict[str, Any]]] | None
    request_log: RequestLogger
    credits: CreditLedger
    idempotency: IdempotencyStore
    metrics: Metrics
    registry: ChuteRegistry

    def __init__(self, *, keys: KeyStore, limiter: RateLimiter, directory: Directory, upstream: Caller, store: Store,
                 config: ApiConfig, moderator: Moderator | None = None,
                 health: Callable[[], Awaitable[dict[str, Any]]] | None = None) -> None:
        super().__init__(dict(
            keys=keys, limiter=limiter, directory=directory, upstream=upstream, store=store, config=config,
            moderator=moderator, health=health, metrics=Metrics(), credits=CreditLedger(keys),
            registry=ChuteRegistry(store.engine),
            request_log=RequestLogger(keys.engine, log_prompts=config.log_prompts),
            idempotency=IdempotencyStore(keys.engine, ttl_s=config.idempotency_ttl_s,
                                         wait_s=config.request_timeout_s + 5.0)))


def gateway_of(connection: HTTPConnection) -> Gateway:
    """The gateway of the app serving ``connection`` (a request)."""
    return connection.app.state
