"""The simulated cluster of the paper's evaluation, built from the reference measurements.

Defaults (documented in the README): 16 workers, SLO 60 s, the deployment's planned models
(``HADIS_DEPLOYMENT``; the packaged ``sd35-replay`` by default: batch-1 latencies of the
reference README, the registry's batch-latency assumption) with the per-prompt scores and
the grid of its ``[table] profile_dir`` and ``prompts``, the full
hybrid grid for the FID surface and for the planners (the MILP's presolve drops dominated
rows itself; baselines that may only use some rows, such as DiffServe's one pair, need the
rows a global Pareto front would have dropped as duplicates), the shipped tuned
router profile with the reference concreteness lexicon, a planning period of 5 s, an
EWMA half-life of 10 s (the 347 s traces compress 347 hours: demand moves within
seconds), and a 10 s swap delay (loading a large diffusion model's weights on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from hadis_celery.settings import settings
from planner.cascade import CascadeConfig
from planner.pareto import pareto_front
from planner.reference import read_prompts, reference_dir
from planner.reference_table import load_reference_table, load_scores
from planner.registry import Registry
from planner.router import FeatureExtractor, HardnessRouter, RouterProfile
from sim.engine import SimSettings
from sim.fid import FidSurface
from sim.workload import PromptSet, derived_set, scored_set

PERIOD_S = 5.0
HALF_LIFE_S = 10.0
SWAP_DELAY_S = 10.0
TRACES = ("azure_multi_1to20qps.txt", "azure_multi_1to24qps.txt", "azure_multi_1to32qps.txt")


@dataclass(frozen=True)
class Scenario:
    registry: Registry
    grid: list[CascadeConfig]  # every profiled row (the FID surface)
    table: list[CascadeConfig]  # the rows the planners choose from (all; the MILP presolves)
    pareto: list[CascadeConfig]  # the Pareto front, for reports
    surface: FidSurface
    router: HardnessRouter
    imagenet: PromptSet
    settings: SimSettings
    half_life_s: float = HALF_LIFE_S
    reference: Path = Path(".")

    def with_settings(self, **kw) -> Scenario:
        return replace(self, settings=replace(self.settings, **kw))

    def trace_path(self, name: str) -> Path:
        return self.reference / "traces" / name

    def diffusiondb(self, seed: int = 0) -> PromptSet:
        return _diffusiondb(self, seed)


@lru_cache(maxsize=2)
def _router(profile_path: str, lexicon: str | None) -> HardnessRouter:
    return HardnessRouter(RouterProfile.load(profile_path), FeatureExtractor(lexicon))


def default_scenario(ref: Path | None = None, *, workers: int = 16, slo_s: float = 60.0,
                     seed: int = 0) -> Scenario:
    """The simulated cluster of the deployment (traces and the DiffusionDB prompts come
    from ``ref``, the reference folder)."""
    ref = Path(ref) if ref else reference_dir()
    s = settings()
    return _scenario(str(ref), workers, slo_s, seed, s.deployment, s.backend, s.model_paths,
                     str(s.router_profile))


@lru_cache(maxsize=4)
def _scenario(ref_s: str, workers: int, slo_s: float, seed: int, *_deployment_key: str
              ) -> Scenario:
    from hadis_celery.deployment import import_registry, load

    ref = Path(ref_s)
    s = settings()
    dep = load(s.deployment or "sd35-replay")
    if dep.profile_dir is None or dep.prompts is None:
        raise ValueError(f"deployment {dep.name}: the simulator needs [table] profile_dir "
                         "(config_results_hybrid.csv, scores_model_K.txt) and prompts")
    lexicon = dep.lexicon or ref / "router" / "concreteness.csv"
    router = _router(str(s.router_profile), str(lexicon) if lexicon.is_file() else None)
    prompts = read_prompts(dep.prompts)
    full, _ = import_registry(dep.profile_dir, s)
    planned = {m.id for m in dep.models if m.plan}
    registry = Registry(tuple(m for m in full if m.id in planned))
    all_scores = load_scores(dep.profile_dir, len(prompts))
    scores = {m: v for m, v in all_scores.items() if m in planned}
    imagenet = scored_set("imagenet", prompts, router, scores)
    grid = [c for c in load_reference_table(dep.profile_dir, full, router.profile,
                                            router_scores=imagenet.router_score,
                                            scores=all_scores)
            if c.light in planned and c.heavy in planned]
    if not grid:
        raise ValueError(f"deployment {dep.name}: no profiled pair of two planned models in "
                         f"{dep.profile_dir}")
    pareto = list(pareto_front(grid))
    sim = SimSettings(workers=workers, slo_s=slo_s, period_s=PERIOD_S,
                      swap_delay_s=SWAP_DELAY_S, seed=seed)
    return Scenario(registry, grid, grid, pareto, FidSurface(grid), router, imagenet, sim,
                    reference=ref)


_DDB: dict[tuple[int, int], PromptSet] = {}


def _diffusiondb(sc: Scenario, seed: int) -> PromptSet:
    key = (id(sc.imagenet), seed)
    if key not in _DDB:
        lines = read_prompts(sc.reference / "prompts" / "diffusiondb_first_5k.txt")
        _DDB[key] = derived_set("diffusiondb", lines, sc.router, sc.imagenet, seed)
    return _DDB[key]
