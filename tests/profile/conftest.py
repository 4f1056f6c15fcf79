"""Fixtures of the profile tests: the reference table, router scores (computed once per
session: ~10 s of spaCy), and real databases: a SQLite file per test and a PostgreSQL
schema per test (database ``test`` on 127.0.0.1, dropped afterwards)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from hadis_celery.db import make_engine
from hadis_celery.examples import sd35_registry
from hadis_celery.settings import settings
from planner.cascade import CascadeConfig
from planner.reference import read_prompts
from planner.reference_table import load_reference_table, load_scores
from planner.router.profile import RouterProfile

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def profile_dir(reference: Path) -> Path:
    return reference / "profile-sd35"


@pytest.fixture(scope="session")
def prompts(reference: Path) -> list[str]:
    return read_prompts(reference / "prompts" / "imagenet1k_captions_5k.txt")


@pytest.fixture(scope="session")
def ref_scores(profile_dir: Path, prompts: list[str]) -> dict[int, np.ndarray]:
    return load_scores(profile_dir, n_prompts=len(prompts))


@pytest.fixture(scope="session")
def router_profile() -> RouterProfile:
    return RouterProfile.load(settings().router_profile)


@pytest.fixture(scope="session")
def ref_router_scores(prompts: list[str]) -> np.ndarray:
    # The CLI's own (memoised) scorer, so CLI imports in this session reuse the result.
    from hadis_celery.commands.profile import router_scores

    return router_scores(settings().router_profile, settings().concreteness, prompts)


@pytest.fixture(scope="session")
def sd35_table(profile_dir: Path, router_profile: RouterProfile) -> list[CascadeConfig]:
    return load_reference_table(profile_dir, sd35_registry(), router_profile)


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hadis.sqlite'}"


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema; the URL sets it as the search_path. Fails, never skips,
    when the server is down."""
    schema = f"hp_test_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_BASE)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
