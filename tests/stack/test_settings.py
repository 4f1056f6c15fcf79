"""``Settings.to_env`` is how ``hadis up``, the benches and the tests hand their settings to
subprocesses: a process started with that environment must read the very same settings."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from hadis_celery.settings import ENV_NAMES, Settings


def test_every_field_has_its_variable():
    assert set(ENV_NAMES) == {f.name for f in dataclasses.fields(Settings)}


def test_to_env_round_trips(monkeypatch):
    s = Settings(database_url="sqlite:////tmp/x.sqlite", broker_url="redis://127.0.0.1:6379/3",
                 redis_url="redis://127.0.0.1:6379/4", image_dir=Path("/tmp/imgs"),
                 time_factor=0.25, swap_delay_s=7.5, slo_s=42.0, planner="hadis-plus",
                 worker_budget=16, api_keys=("a", "b"), rate_limit_per_min=0, lease_s=3.0,
                 max_attempts=2, disc_head=Path("/tmp/head.pt"), backend="tiny")
    for var in ENV_NAMES.values():
        monkeypatch.delenv(var, raising=False)
    for k, v in s.to_env().items():
        monkeypatch.setenv(k, v)
    assert Settings() == s
    assert os.environ["HADIS_API_KEYS"] == "a,b"
