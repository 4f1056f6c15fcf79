"""Fixtures of the planner tests: the sd35 reference table, small hand-made problems and an
independent brute-force optimum (``brute_force``: every row, every batch combination,
minimum workers by ceiling division; no solver and no code shared with ``planner.milp``
beyond the registry and the ``CascadeConfig`` fractions)."""

from __future__ import annotations

import itertools
import math

import pytest

from hadis_celery.examples import sd35_registry
from planner.cascade import CascadeConfig
from planner.reference_table import load_reference_table
from planner.registry import ModelSpec, Registry


@pytest.fixture(scope="session")
def sd35():
    return sd35_registry()


@pytest.fixture(scope="session")
def sd35_table(reference, sd35):
    return load_reference_table(reference / "profile-sd35", sd35)


def row(light: int, heavy: int, r: float, d: float, fid: float) -> CascadeConfig:
    """A table row with the fields the planner reads."""
    return CascadeConfig(light=light, heavy=heavy, router_ratio=r,
                         theta=math.inf if r == 0 else 1 - r, disc_ratio=d,
                         tau=-math.inf if d == 0 else d, fid=fid)


@pytest.fixture
def two_models() -> Registry:
    """A: 1 s per image, B: 4 s, batch 1 only: every optimum below is hand-computed."""
    return Registry((
        ModelSpec(id=0, name="A", queue="a", latency={1: 1.0}),
        ModelSpec(id=1, name="B", queue="b", latency={1: 4.0}),
    ))


@pytest.fixture
def two_table() -> list[CascadeConfig]:
    return [
        row(0, 1, 0.0, 0.0, 30.0),  # A alone
        row(0, 1, 1.0, 0.0, 20.0),  # B alone
        row(0, 1, 0.5, 0.0, 24.0),  # half and half, router
        row(0, 1, 0.0, 0.2, 27.0),  # discriminator reroutes 20 %
    ]


SAFETY = 1.2


def wait(state, queue: str) -> float:
    qs = state.queues.get(queue)
    if qs is None or qs.length == 0:
        return 0.0
    rate = qs.arrival_rate or state.demand
    if rate > 0:
        return SAFETY * qs.length / rate
    return SAFETY * qs.length * state.registry.by_queue(queue).latency_b1


def brute_force(state, demand: float | None = None):
    """(fid, min total workers) of the optimum, or None when nothing is feasible."""
    lam = state.demand if demand is None else demand
    reg = state.registry
    best = None
    for c in state.table:
        roles = {}
        if c.light == c.heavy:
            roles["light"] = (c.light, 1.0)
        else:
            if c.frac_light > 0:
                roles["light"] = (c.light, c.frac_light)
            if c.frac_heavy > 0:
                roles["heavy"] = (c.heavy, c.frac_heavy)
        waits = {}
        for role, (m, _) in roles.items():
            spec = reg.get(m)
            waits[role] = wait(state, spec.light_queue if role == "light" else spec.heavy_queue)
        names = list(roles)
        for batches in itertools.product(*(reg.get(roles[r][0]).batch_sizes for r in names)):
            b = dict(zip(names, batches, strict=True))
            lat = {r: reg.get(roles[r][0]).batch_latency(b[r]) + waits[r] for r in names}
            paths = []
            if c.light == c.heavy:
                paths.append(lat["light"])
            else:
                if c.frac_light - c.frac_rerouted > 0:
                    paths.append(lat["light"])
                if c.router_ratio > 0:
                    paths.append(lat["heavy"])
                if c.frac_rerouted > 0:
                    paths.append(lat["light"] + lat["heavy"])
            if any(p > state.slo_s * (1 + 1e-9) for p in paths):
                continue
            n = 0
            for r in names:
                m, share = roles[r]
                thr = reg.get(m).throughput(b[r])
                n += max(1, math.ceil(lam * share / thr - 1e-9))
            if n > state.workers:
                continue
            key = (round(c.fid, 9), n)
            if best is None or key < best:
                best = key
    return best


@pytest.fixture(scope="session")
def optimum():
    return brute_force
