"""Per-model swap times (issue 14): declared in the deployment file, measured by the workers
(SQL ``model_loads``), and used by the planner and the simulator instead of the one global
``HADIS_SWAP_DELAY_S`` when known."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from hadis_celery import db, store
from hadis_celery.deployment import DeploymentError, load_table
from hadis_celery.settings import Settings
from planner.cascade import CascadeConfig
from planner.plan import Plan, PlannerState, QueueState
from planner.plus import HadisPlusPlanner, PlusOptions
from planner.registry import ModelSpec, Registry, with_swap_s

from .conftest import write_deployment


def _switching_sim(heavy_swap_s: float | None):
    """Two workers serve the light model for 2 s, then every worker moves to the heavy one
    (the simulator's swap); returns the earliest finish of a heavy-served query."""
    from planner.demand import EwmaDemand
    from sim.engine import SimSettings, Simulation, Workload
    from sim.fid import FidSurface

    reg = Registry((ModelSpec(id=0, name="light", queue="l", latency={1: 1.0}),
                    ModelSpec(id=1, name="heavy", queue="h", latency={1: 2.0, 2: 3.0},
                              swap_s=heavy_swap_s)))
    grid = [CascadeConfig(0, 1, r, math.nan, d, math.nan, fid=30 - 10 * r - 5 * d)
            for r in (0.0, 1.0) for d in (0.0, 1.0)]
    light_only = CascadeConfig(0, 1, 0.0, math.inf, 0.0, -math.inf, fid=30.0)
    all_heavy = CascadeConfig(0, 1, 1.0, -math.inf, 0.0, -math.inf, fid=20.0)

    class Switch:
        calls = 0

        def plan(self, state):
            self.calls += 1
            cfg, workers = ((light_only, {"light_l": 2}) if self.calls == 1
                            else (all_heavy, {"heavy_h": 2}))
            return Plan(planner="switch", config=cfg, workers=workers, batch={0: 1, 1: 2},
                        fid=cfg.fid, utilisation={}, demand=state.demand, slo_s=state.slo_s,
                        budget=state.workers, routing="score")

    n = 40
    w = Workload(np.linspace(0.0, 1.0, n), np.zeros(n), {0: np.ones(n), 1: np.ones(n)})
    res = Simulation(w, reg, grid, Switch(), EwmaDemand(10.0), FidSurface(grid),
                     SimSettings(workers=2, slo_s=1000.0, period_s=2.0, swap_delay_s=0.5)).run()
    heavy = res.served_model == 1
    assert heavy.any()
    return float(res.finish_s[heavy].min())


def test_the_simulator_charges_each_model_its_own_swap_time():
    default = _switching_sim(None)  # the global 0.5 s
    slow = _switching_sim(40.0)
    assert default < 2.0 + 0.5 + 3.0 + 1e-6
    assert slow >= 2.0 + 40.0  # no heavy batch before the declared swap ended


def _state(reg: Registry, table) -> PlannerState:
    """Every worker on the light queue of the packaged table's fastest model, with a
    backlog: any switch must absorb the swap of the model it moves to."""
    fast = min(reg, key=lambda m: m.latency_b1)
    prev = HadisPlusPlanner().plan(PlannerState(
        demand=20.0, workers=16, slo_s=30.0, table=table, registry=reg, queues={},
        previous=None))
    return PlannerState(demand=25.0, workers=16, slo_s=30.0, table=table, registry=reg,
                        queues={fast.light_queue: QueueState(250, 25.0)}, previous=prev)


def test_the_planner_uses_each_models_swap_time_over_the_global_one():
    t = load_table(Settings())
    reg = t.registry
    for swap in (0.0, 1000.0):  # the global 10 s plans like 0 s here, not like 1000 s
        per_model = with_swap_s(reg, {m.name: swap for m in reg})
        a = HadisPlusPlanner(options=PlusOptions(swap_delay_s=swap)).plan(_state(reg, t.rows))
        b = HadisPlusPlanner(options=PlusOptions(swap_delay_s=10.0)).plan(
            _state(per_model, t.rows))
        assert (a.config, a.workers, a.batch) == (b.config, b.workers, b.batch)
    zero, slow = (HadisPlusPlanner().plan(_state(with_swap_s(reg, {m.name: s for m in reg}),
                                                 t.rows)) for s in (0.0, 1000.0))
    assert zero.fid < slow.fid  # slow swaps keep the backlog's workers where they are


def test_declared_swap_times_and_measured_ones(tmp_path, router_json):
    from hadis_celery.settings import DEFAULT_PROFILE

    models = [{"name": m.name, "queue": m.queue, "id": m.id, "swap_s": 3.5}
              if m.id == 0 else {"name": m.name, "queue": m.queue, "id": m.id}
              for m in load_table(Settings()).registry]
    f = write_deployment(tmp_path / "d.toml", models, table={"source": str(DEFAULT_PROFILE)},
                         router=router_json)
    reg = load_table(Settings(deployment=str(f))).registry
    assert reg.get(0).swap_s == 3.5 and reg.get(1).swap_s is None
    assert reg.get(0).swap_seconds(10.0) == 3.5 and reg.get(1).swap_seconds(10.0) == 10.0
    assert ModelSpec.from_dict(reg.get(0).to_dict()) == reg.get(0)  # snapshots keep it
    bad = write_deployment(tmp_path / "bad.toml", [{**models[0], "swap_s": -1}],
                           table={"source": str(DEFAULT_PROFILE)}, router=router_json)
    with pytest.raises(DeploymentError, match=r"models\[0\]\.swap_s: .*greater than or "):
        load_table(Settings(deployment=str(bad)))

    engine = db.make_engine(f"sqlite:///{tmp_path / 'm.sqlite'}")
    db.upgrade(engine)
    name = reg.get(1).name
    for i, (load, warm) in enumerate([(9.0, 1.0), (1.0, 1.0), (4.0, 1.0), (2.0, 0.5)]):
        store.record_load(engine, model=name, worker="w", backend="diffusers", kind="swap",
                          load_s=load, warmup_s=warm, at=float(i))
    # load + warm-up: 10, 2, 5, 2.5 s; the median of the last five, and of the last one
    assert store.measured_swap_s(engine, [name, "other"]) == {name: 3.75}
    assert store.measured_swap_s(engine, [name], samples=1) == {name: 2.5}
    merged = with_swap_s(reg, {name: 3.0})
    assert merged.get(1).swap_s == 3.0 and merged.get(0).swap_s == 3.5
    assert replace(merged.get(1), swap_s=None) == reg.get(1)
    engine.dispose()
