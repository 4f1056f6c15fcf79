"""Shared fixtures. Tests read the reference measurements from ../shared/reference and talk
to the real Redis and PostgreSQL on 127.0.0.1; a missing one is an error, never a skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from planner.reference import reference_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def reference() -> Path:
    ref = reference_dir()
    assert ref.is_dir(), f"reference measurements not found at {ref} (set HADIS_REFERENCE_DIR)"
    return ref


@pytest.fixture(scope="session")
def lexicon_path(reference: Path) -> Path:
    return reference / "router" / "concreteness.csv"
