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

This module builds the scenario from plain values (``ScenarioSource``: a registry, folders
and files); which deployment, settings and profile they come from is the shell's business
(``hadis_celery.scenario.default_scenario`` resolves ``HADIS_DEPLOYMENT`` and calls
``build_scenario``), so the simulator imports nothing of the serving stack.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from planner.cascade import CascadeConfig
from planner.pareto import pareto_front
from planner.reference import read_prompts
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


@dataclass(frozen=True)
class ScenarioSource:
    """What a scenario is built from, resolved by the caller (the shell reads them from the
    deployment file and the settings)."""

    name: str  # the deployment's, for messages
    registry: Registry | None  # every model of the profile folder (ids as in its CSV)
    planned: frozenset[int]  # the models the planners may use
    profile_dir: Path | None  # config_results_hybrid.csv and scores_model_K.txt
    prompts: Path | None  # the prompts the scores are of
    router_profile: Path
    lexicon: Path | None = None  # None: the reference folder's router/concreteness.csv


@lru_cache(maxsize=2)
def _router(profile_path: str, lexicon: str | None) -> HardnessRouter:
    return HardnessRouter(RouterProfile.load(profile_path), FeatureExtractor(lexicon))


def build_scenario(src: ScenarioSource, ref: Path, *, workers: int = 16,
                   slo_s: float = 60.0, seed: int = 0) -> Scenario:
    """The simulated cluster of ``src`` (traces and the DiffusionDB prompts come from
    ``ref``, the reference folder)."""
    ref = Path(ref)
    if src.profile_dir is None or src.prompts is None or src.registry is None:
        raise ValueError(f"deployment {src.name}: the simulator needs [table] profile_dir "
                         "(config_results_hybrid.csv, scores_model_K.txt) and prompts")
    lexicon = src.lexicon or ref / "router" / "concreteness.csv"
    router = _router(str(src.router_profile), str(lexicon) if lexicon.is_file() else None)
    prompts = read_prompts(src.prompts)
    full, planned = src.registry, src.planned
    registry = Registry(tuple(m for m in full if m.id in planned))
    all_scores = load_scores(src.profile_dir, len(prompts))
    scores = {m: v for m, v in all_scores.items() if m in planned}
    imagenet = scored_set("imagenet", prompts, router, scores)
    grid = [c for c in load_reference_table(src.profile_dir, full, router.profile,
                                            router_scores=imagenet.router_score,
                                            scores=all_scores)
            if c.light in planned and c.heavy in planned]
    if not grid:
        raise ValueError(f"deployment {src.name}: no profiled pair of two planned models in "
                         f"{src.profile_dir}")
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
