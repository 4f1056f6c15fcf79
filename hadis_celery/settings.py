"""Deployment settings, read once from the environment (``HADIS_*``) with embedded defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from planner.reference import reference_dir

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
DEFAULT_ROUTER_PROFILE = PACKAGE_DATA / "router_sd35.json"
DEFAULT_PROFILE = PACKAGE_DATA / "profile_sd35.json"


def _default_lexicon() -> Path | None:
    env = os.environ.get("HADIS_CONCRETENESS")
    if env:
        return Path(env)
    candidate = reference_dir() / "router" / "concreteness.csv"
    return candidate if candidate.is_file() else None


@dataclass(frozen=True)
class Settings:
    database_url: str = field(
        default_factory=lambda: os.environ.get("HADIS_DATABASE_URL", "sqlite:///var/hadis.sqlite")
    )
    broker_url: str = field(
        default_factory=lambda: os.environ.get("HADIS_BROKER_URL", "redis://127.0.0.1:6379/0")
    )
    router_profile: Path = field(
        default_factory=lambda: Path(
            os.environ.get("HADIS_ROUTER_PROFILE", str(DEFAULT_ROUTER_PROFILE))
        )
    )
    concreteness: Path | None = field(default_factory=_default_lexicon)
    # The deployment file (issue 14): models, table, router, discriminator, image store.
    # "" means the packaged example sd35-replay. A variable that is set (HADIS_PROFILE,
    # HADIS_ROUTER_PROFILE, ...) wins over the file's value for its field.
    deployment: str = field(default_factory=lambda: _env("HADIS_DEPLOYMENT", ""))
    # -- the serving stack (issue 6); every field has an embedded default ------------------
    # Redis for live state (plan, counters, heartbeats, rate limits): the broker by default.
    redis_url: str = field(default_factory=lambda: _env("HADIS_REDIS_URL", ""))
    # Configuration table: a JSON file, or "sql:<name>" for a profile stored in SQL.
    profile: str = field(default_factory=lambda: _env("HADIS_PROFILE", str(DEFAULT_PROFILE)))
    backend: str = field(default_factory=lambda: _env("HADIS_BACKEND", ""))  # "": registry's
    # Local weights per model queue for the diffusers backend: "sdxl=/models/sdxl,...".
    model_paths: str = field(default_factory=lambda: _env("HADIS_MODEL_PATHS", ""))
    image_dir: Path = field(default_factory=lambda: Path(_env("HADIS_IMAGE_DIR", "var/images")))
    # The image store as an fsspec URL (file:///shared/images, s3://bucket/images, ...) for
    # stacks on several hosts; "": the local folder image_dir (hadis_celery.imagestore).
    image_store: str = field(default_factory=lambda: _env("HADIS_IMAGE_STORE", ""))
    # Replay backend: profiled latency x time_factor. The planner runs in profile time
    # (SLO / factor, demand x factor), so a fast replay keeps the same plans.
    time_factor: float = field(default_factory=lambda: _float("HADIS_TIME_FACTOR", 1.0))
    # Replay backend: seconds (profile time, x time_factor) a worker spends loading another
    # model's weights when the plan moves it; the simulator's swap delay.
    swap_delay_s: float = field(default_factory=lambda: _float("HADIS_SWAP_DELAY_S", 10.0))
    slo_s: float = field(default_factory=lambda: _float("HADIS_SLO_S", 60.0))
    max_slo_s: float = field(default_factory=lambda: _float("HADIS_MAX_SLO_S", 3600.0))
    plan_period_s: float = field(default_factory=lambda: _float("HADIS_PLAN_PERIOD_S", 10.0))
    planner: str = field(default_factory=lambda: _env("HADIS_PLANNER", "hadis"))
    # HADIS's switch-cost check (issue 23): on, a configuration change must absorb the
    # backlog it moves and its swaps, so the live planner does not flip-flop between pairs.
    # Off (HADIS_SWITCH_COST=0): the paper's wrapper, which the simulator's experiments use.
    switch_cost: bool = field(default_factory=lambda: _bool("HADIS_SWITCH_COST", True))
    solver: str = field(default_factory=lambda: _env("HADIS_SOLVER", "highs"))
    demand_half_life_s: float = field(
        default_factory=lambda: _float("HADIS_DEMAND_HALF_LIFE_S", 30.0))
    worker_budget: int = field(default_factory=lambda: int(_float("HADIS_WORKERS", 0)))  # 0: live
    api_keys: tuple[str, ...] = field(default_factory=lambda: tuple(
        k.strip() for k in _env("HADIS_API_KEYS", "").split(",") if k.strip()))
    # Keys that see every query, the dashboard and /metrics (webapp.auth); they are valid
    # API keys too. Keys are required when either list is set.
    operator_keys: tuple[str, ...] = field(default_factory=lambda: tuple(
        k.strip() for k in _env("HADIS_OPERATOR_KEYS", "").split(",") if k.strip()))
    rate_limit_per_min: int = field(
        default_factory=lambda: int(_float("HADIS_RATE_LIMIT_PER_MIN", 600)))  # 0: off
    max_request_bytes: int = field(
        default_factory=lambda: int(_float("HADIS_MAX_REQUEST_BYTES", 32768)))
    # -- the production front door (issue 17): gunicorn and the request path ---------------
    # Front-door processes (gunicorn workers), threads per process running the app, and
    # gunicorn's worker class (the default buffers whole requests before the app sees them,
    # so a slow client holds a socket, not a thread; ``webapp.server``).
    web_workers: int = field(default_factory=lambda: int(_float("HADIS_WEB_WORKERS", 2)))
    web_threads: int = field(default_factory=lambda: int(_float("HADIS_WEB_THREADS", 4)))
    web_worker_class: str = field(default_factory=lambda: _env(
        "HADIS_WEB_WORKER_CLASS", "webapp.server.BufferedWorker"))
    # A client must send its headers, and then its body, within this many seconds each.
    web_client_timeout_s: float = field(
        default_factory=lambda: _float("HADIS_WEB_CLIENT_TIMEOUT_S", 10.0))
    # gunicorn restarts a worker silent for this long; idle keep-alive connections close after
    # web_keepalive_s.
    web_timeout_s: float = field(default_factory=lambda: _float("HADIS_WEB_TIMEOUT_S", 30.0))
    web_keepalive_s: float = field(default_factory=lambda: _float("HADIS_WEB_KEEPALIVE_S", 5.0))
    # Proxies in front of the front door whose X-Forwarded-For/-Proto to trust (Werkzeug's
    # ProxyFix); 0: none, the socket address is the client (rate limit, logs).
    trusted_proxies: int = field(default_factory=lambda: int(_float("HADIS_TRUSTED_PROXIES", 0)))
    # Each Celery worker's Prometheus exporter (``workers.metrics``) listens on this port;
    # 0: off. ``hadis up`` gives its workers consecutive ports from it.
    worker_metrics_port: int = field(
        default_factory=lambda: int(_float("HADIS_WORKER_METRICS_PORT", 0)))
    sweep_after_s: float = field(default_factory=lambda: _float("HADIS_SWEEP_AFTER_S", 300.0))
    heartbeat_s: float = field(default_factory=lambda: _float("HADIS_HEARTBEAT_S", 5.0))
    # -- failures and recovery (issue 9) ----------------------------------------------------
    # A batch's rows carry a lease in SQL (their updated_at), renewed every lease_s / 3 while
    # the batch runs; running rows whose lease lapsed are re-sent at the next sweep.
    lease_s: float = field(default_factory=lambda: _float("HADIS_LEASE_S", 30.0))
    # Seconds between sweeps; 0: max(plan period, 5 s).
    sweep_period_s: float = field(default_factory=lambda: _float("HADIS_SWEEP_PERIOD_S", 0.0))
    # Messages a query may be given (front door, reroute, re-sends) before it is failed.
    max_attempts: int = field(default_factory=lambda: int(_float("HADIS_MAX_ATTEMPTS", 5)))
    # Per-batch time limit: max(min, factor x the predicted batch seconds); the batch's
    # queries fail with the reason and the worker takes the next message.
    task_timeout_min_s: float = field(
        default_factory=lambda: _float("HADIS_TASK_TIMEOUT_MIN_S", 60.0))
    task_timeout_factor: float = field(
        default_factory=lambda: _float("HADIS_TASK_TIMEOUT_FACTOR", 3.0))
    # Celery's hard limit per message (the pool child is killed); 0: derived from the
    # slowest profiled batch (see hadis_celery.celery.hard_time_limit_s).
    task_hard_timeout_s: float = field(
        default_factory=lambda: _float("HADIS_TASK_HARD_TIMEOUT_S", 0.0))
    # How long a worker retries writing a batch's results while SQL is unavailable.
    sql_retry_s: float = field(default_factory=lambda: _float("HADIS_SQL_RETRY_S", 30.0))
    disc_head: Path | None = field(default_factory=lambda: (
        Path(_env("HADIS_DISC_HEAD", "")) if _env("HADIS_DISC_HEAD", "") else None))
    # -- storage and retention (issue 16) ----------------------------------------------------
    # After a worker failed to write an image (disk full, read-only store), the front door
    # refuses new work and /v1/health reports it for this long; a successful write clears it.
    storage_retry_s: float = field(default_factory=lambda: _float("HADIS_STORAGE_RETRY_S", 30.0))
    # Finished queries (with their images), old plans and dead messages older than this are
    # pruned by the beat (``hadis db prune``); a duration such as 30d or 12h, 0: off.
    prune_after_s: float = field(default_factory=lambda: _duration("HADIS_PRUNE_AFTER"))

    def __post_init__(self) -> None:
        """Fields the deployment file sets, unless their variable is set (or they were given
        explicitly, i.e. differ from the embedded default)."""
        if not self.deployment:
            return
        from hadis_celery.deployment import settings_defaults

        for name, value in settings_defaults(self.deployment).items():
            embedded = _default_lexicon() if name == "concreteness" else _EMBEDDED.get(name)
            if os.environ.get(ENV_NAMES[name]) or getattr(self, name) != embedded:
                continue
            object.__setattr__(self, name, value)

    @property
    def state_url(self) -> str:
        """Redis URL of the live state (``HADIS_REDIS_URL``, else the broker)."""
        return self.redis_url or self.broker_url

    def to_env(self) -> dict[str, str]:
        """The ``HADIS_*`` variables that make another process read these very settings
        (``hadis up``'s children, the benches' and tests' subprocesses)."""
        out: dict[str, str] = {}
        for name, var in ENV_NAMES.items():
            v = getattr(self, name)
            if v is None:
                continue
            out[var] = ",".join(v) if isinstance(v, tuple) else str(v)
        return out


# Every field and the variable it is read from (``Settings.to_env`` writes them back).
ENV_NAMES = {
    "database_url": "HADIS_DATABASE_URL", "broker_url": "HADIS_BROKER_URL",
    "router_profile": "HADIS_ROUTER_PROFILE", "concreteness": "HADIS_CONCRETENESS",
    "deployment": "HADIS_DEPLOYMENT",
    "redis_url": "HADIS_REDIS_URL", "profile": "HADIS_PROFILE", "backend": "HADIS_BACKEND",
    "model_paths": "HADIS_MODEL_PATHS", "image_dir": "HADIS_IMAGE_DIR",
    "image_store": "HADIS_IMAGE_STORE",
    "time_factor": "HADIS_TIME_FACTOR", "swap_delay_s": "HADIS_SWAP_DELAY_S",
    "slo_s": "HADIS_SLO_S", "max_slo_s": "HADIS_MAX_SLO_S",
    "plan_period_s": "HADIS_PLAN_PERIOD_S", "planner": "HADIS_PLANNER",
    "switch_cost": "HADIS_SWITCH_COST",
    "solver": "HADIS_SOLVER", "demand_half_life_s": "HADIS_DEMAND_HALF_LIFE_S",
    "worker_budget": "HADIS_WORKERS", "api_keys": "HADIS_API_KEYS",
    "operator_keys": "HADIS_OPERATOR_KEYS",
    "rate_limit_per_min": "HADIS_RATE_LIMIT_PER_MIN",
    "max_request_bytes": "HADIS_MAX_REQUEST_BYTES", "sweep_after_s": "HADIS_SWEEP_AFTER_S",
    "web_workers": "HADIS_WEB_WORKERS", "web_threads": "HADIS_WEB_THREADS",
    "web_worker_class": "HADIS_WEB_WORKER_CLASS",
    "web_client_timeout_s": "HADIS_WEB_CLIENT_TIMEOUT_S", "web_timeout_s": "HADIS_WEB_TIMEOUT_S",
    "web_keepalive_s": "HADIS_WEB_KEEPALIVE_S", "trusted_proxies": "HADIS_TRUSTED_PROXIES",
    "worker_metrics_port": "HADIS_WORKER_METRICS_PORT",
    "heartbeat_s": "HADIS_HEARTBEAT_S", "lease_s": "HADIS_LEASE_S",
    "sweep_period_s": "HADIS_SWEEP_PERIOD_S", "max_attempts": "HADIS_MAX_ATTEMPTS",
    "task_timeout_min_s": "HADIS_TASK_TIMEOUT_MIN_S",
    "task_timeout_factor": "HADIS_TASK_TIMEOUT_FACTOR",
    "task_hard_timeout_s": "HADIS_TASK_HARD_TIMEOUT_S", "sql_retry_s": "HADIS_SQL_RETRY_S",
    "disc_head": "HADIS_DISC_HEAD", "storage_retry_s": "HADIS_STORAGE_RETRY_S",
    "prune_after_s": "HADIS_PRUNE_AFTER",
}

# The defaults a deployment file may replace (a field still at its default takes the file's).
_EMBEDDED = {"profile": str(DEFAULT_PROFILE), "router_profile": DEFAULT_ROUTER_PROFILE,
             "image_dir": Path("var/images"), "image_store": "", "disc_head": None}


class SettingsError(ValueError):
    """A ``HADIS_*`` variable that cannot be read (the CLI prints it as one ``Error:`` line)."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: not a number") from exc


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r}: not a yes/no value (1/0, true/false, yes/no, on/off)")


def _duration(name: str) -> float:
    from hadis_celery.retention import parse_duration

    raw = os.environ.get(name, "")
    try:
        return parse_duration(raw) if raw.strip() else 0.0
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: {exc}") from exc


def settings() -> Settings:
    return Settings()
