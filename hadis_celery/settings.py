"""Deployment settings, read once from the environment (``HADIS_*``) with embedded defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hadis_celery.reference import reference_dir

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
    # -- the serving stack (issue 6); every field has an embedded default ------------------
    # Redis for live state (plan, counters, heartbeats, rate limits): the broker by default.
    redis_url: str = field(default_factory=lambda: _env("HADIS_REDIS_URL", ""))
    # Configuration table: a JSON file, or "sql:<name>" for a profile stored in SQL.
    profile: str = field(default_factory=lambda: _env("HADIS_PROFILE", str(DEFAULT_PROFILE)))
    backend: str = field(default_factory=lambda: _env("HADIS_BACKEND", ""))  # "": registry's
    # Local weights per model queue for the diffusers backend: "sdxl=/models/sdxl,...".
    model_paths: str = field(default_factory=lambda: _env("HADIS_MODEL_PATHS", ""))
    image_dir: Path = field(default_factory=lambda: Path(_env("HADIS_IMAGE_DIR", "var/images")))
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
    solver: str = field(default_factory=lambda: _env("HADIS_SOLVER", "highs"))
    demand_half_life_s: float = field(
        default_factory=lambda: _float("HADIS_DEMAND_HALF_LIFE_S", 30.0))
    worker_budget: int = field(default_factory=lambda: int(_float("HADIS_WORKERS", 0)))  # 0: live
    api_keys: tuple[str, ...] = field(default_factory=lambda: tuple(
        k.strip() for k in _env("HADIS_API_KEYS", "").split(",") if k.strip()))
    rate_limit_per_min: int = field(
        default_factory=lambda: int(_float("HADIS_RATE_LIMIT_PER_MIN", 600)))  # 0: off
    max_request_bytes: int = field(
        default_factory=lambda: int(_float("HADIS_MAX_REQUEST_BYTES", 32768)))
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
    "redis_url": "HADIS_REDIS_URL", "profile": "HADIS_PROFILE", "backend": "HADIS_BACKEND",
    "model_paths": "HADIS_MODEL_PATHS", "image_dir": "HADIS_IMAGE_DIR",
    "time_factor": "HADIS_TIME_FACTOR", "swap_delay_s": "HADIS_SWAP_DELAY_S",
    "slo_s": "HADIS_SLO_S", "max_slo_s": "HADIS_MAX_SLO_S",
    "plan_period_s": "HADIS_PLAN_PERIOD_S", "planner": "HADIS_PLANNER",
    "solver": "HADIS_SOLVER", "demand_half_life_s": "HADIS_DEMAND_HALF_LIFE_S",
    "worker_budget": "HADIS_WORKERS", "api_keys": "HADIS_API_KEYS",
    "rate_limit_per_min": "HADIS_RATE_LIMIT_PER_MIN",
    "max_request_bytes": "HADIS_MAX_REQUEST_BYTES", "sweep_after_s": "HADIS_SWEEP_AFTER_S",
    "heartbeat_s": "HADIS_HEARTBEAT_S", "lease_s": "HADIS_LEASE_S",
    "sweep_period_s": "HADIS_SWEEP_PERIOD_S", "max_attempts": "HADIS_MAX_ATTEMPTS",
    "task_timeout_min_s": "HADIS_TASK_TIMEOUT_MIN_S",
    "task_timeout_factor": "HADIS_TASK_TIMEOUT_FACTOR",
    "task_hard_timeout_s": "HADIS_TASK_HARD_TIMEOUT_S", "sql_retry_s": "HADIS_SQL_RETRY_S",
    "disc_head": "HADIS_DISC_HEAD",
}


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r}: not a number") from exc


def settings() -> Settings:
    return Settings()
