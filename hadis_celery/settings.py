"""Deployment settings, read once from the environment (``HADIS_*``) with embedded defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hadis_celery.reference import reference_dir

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
DEFAULT_ROUTER_PROFILE = PACKAGE_DATA / "router_sd35.json"


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


def settings() -> Settings:
    return Settings()
