"""Pareto pruning: nothing kept is dominated, everything removed is dominated (or a twin)."""

from __future__ import annotations

import itertools
import random

import pytest

from planner.cascade import CascadeConfig
from planner.pareto import (
    dominates,
    pareto_by_pair,
    pareto_front,
    pareto_indices,
)


def _check_partition(configs, cost):
    res = pareto_indices(configs, cost)
    kept = set(res.kept)
    assert kept.isdisjoint(res.dominated) and kept.isdisjoint(res.duplicate)
    assert len(kept) + len(res.dominated) + len(res.duplicate) == len(configs)
    for i in kept:  # no kept row is dominated by any row of the table
        assert not any(dominates(configs[j], configs[i], cost) for j in range(len(configs)))
    for i, j in res.dominated.items():  # every removed row has a real dominator
        assert dominates(configs[j], configs[i], cost)
    for i, k in res.duplicate.items():  # twins equal a kept row, which came first
        assert k in kept and k < i
        assert not dominates(configs[k], configs[i], cost)
        assert not dominates(configs[i], configs[k], cost)
        assert configs[i].fid == pytest.approx(configs[k].fid)
    return res


@pytest.mark.parametrize("cost", ["per_model", "total"])
def test_reference_front(sd35_table, cost):
    res = _check_partition(sd35_table, cost)
    # per model: 197 of 726 kept; the scalar (mean-latency) cost prunes far more
    assert len(res.kept) == {"per_model": 197, "total": 47}[cost]


def test_per_model_front_is_a_superset_of_the_total_cost_front(sd35_table):
    # dominated per model implies dominated in total, so the scalar front is a subset
    per_model = set(pareto_indices(sd35_table, "per_model").kept)
    total = set(pareto_indices(sd35_table, "total").kept)
    assert total < per_model


def test_single_models_appear_once_and_best_rows_are_kept(sd35_table):
    front = pareto_front(sd35_table)
    alone = [c for c in front if c.frac_heavy == 0.0 or c.frac_light == 0.0]
    served = sorted(c.light if c.frac_heavy == 0.0 else c.heavy for c in alone)
    assert served == [0, 1, 2, 3]  # each model alone, once (duplicates over pairs dropped)
    best = min(c.fid for c in sd35_table)
    assert min(c.fid for c in front) == best
    cheapest = min(sd35_table, key=lambda c: c.gpu_s_total)
    assert cheapest in front


def test_per_pair_fronts(sd35_table):
    per_pair = pareto_by_pair(sd35_table)
    for pair in {c.pair for c in sd35_table}:
        rows = [c for c in sd35_table if c.pair == pair]
        kept = [c for c in per_pair if c.pair == pair]
        assert kept and len(kept) < len(rows)
        for c in kept:
            assert not any(dominates(o, c) for o in rows)
    union = pareto_front(sd35_table)
    assert len(union) <= len(per_pair)


def _cfg(light, heavy, r, d, fid, ls=1.0, hs=10.0):
    return CascadeConfig(light=light, heavy=heavy, router_ratio=r, theta=0.0, disc_ratio=d,
                         tau=0.0, fid=fid, light_s=ls, heavy_s=hs)


def test_vector_cost_keeps_what_mean_latency_would_drop():
    # a: cheaper in total but all of it on the slow model; b: more time, on the fast one.
    a = _cfg(0, 1, 1.0, 0.0, 20.0, ls=1.0, hs=3.0)  # {0: 0, 1: 3.0}
    b = _cfg(0, 1, 0.0, 1.0, 20.0, ls=1.5, hs=2.0)  # {0: 1.5, 1: 2.0}: total 3.5
    assert dominates(a, b, "total") and not dominates(a, b, "per_model")
    assert len(pareto_front([a, b])) == 2 and pareto_front([a, b], cost="total") == [a]


def test_against_brute_force_on_random_tables():
    rng = random.Random(7)
    for _ in range(30):
        configs = [
            _cfg(*rng.choice([(0, 1), (0, 2), (1, 2)]), rng.choice([0, 0.5, 1]),
                 rng.choice([0, 0.5, 1]), rng.choice([20.0, 21.0, 22.0]),
                 ls=rng.choice([1.0, 2.0]), hs=rng.choice([5.0, 10.0]))
            for _ in range(25)
        ]
        res = _check_partition(configs, "per_model")
        naive = [i for i, c in enumerate(configs)
                 if not any(dominates(o, c) for o in configs)]
        assert set(res.kept) <= set(naive)
        for i in set(naive) - set(res.kept):
            assert i in res.duplicate
        for i, j in itertools.combinations(res.kept, 2):
            assert not (dominates(configs[i], configs[j]) or dominates(configs[j], configs[i]))


def test_missing_latencies_are_refused():
    with pytest.raises(ValueError, match="GPU-seconds"):
        pareto_front([CascadeConfig(0, 1, 0.5, 0.0, 0.5, 0.0, 20.0)] * 2)
