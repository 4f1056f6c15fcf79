"""The simulated cluster of *this* deployment: the shell's half of ``sim.scenario``.

The simulator builds a scenario from plain values (``sim.scenario.ScenarioSource``); this
module resolves them from the deployment file (``HADIS_DEPLOYMENT``, the packaged
``sd35-replay`` by default), its ``[table] profile_dir`` and ``prompts``, and the router
profile of the settings, as the live stack does. ``hadis experiment``, the benchmarks and
the simulator's tests call ``default_scenario``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from hadis_celery.settings import Settings, settings
from planner.reference import reference_dir
from sim.scenario import Scenario, ScenarioSource, build_scenario


def scenario_source(s: Settings | None = None) -> ScenarioSource:
    """The deployment's models, profile folder, prompts, lexicon and router profile."""
    from hadis_celery.deployment import DEFAULT_EXAMPLE, import_registry, load

    s = s or settings()
    dep = load(s.deployment or DEFAULT_EXAMPLE)
    full = None if dep.profile_dir is None else import_registry(dep.profile_dir, s)[0]
    return ScenarioSource(name=dep.name, registry=full,
                          planned=frozenset(m.id for m in dep.models if m.plan),
                          profile_dir=dep.profile_dir, prompts=dep.prompts,
                          router_profile=Path(s.router_profile), lexicon=dep.lexicon)


def default_scenario(ref: Path | None = None, *, workers: int = 16, slo_s: float = 60.0,
                     seed: int = 0) -> Scenario:
    """The simulated cluster of the deployment (traces and the DiffusionDB prompts come
    from ``ref``, the reference folder); built once per deployment and arguments."""
    ref = Path(ref) if ref else reference_dir()
    s = settings()
    return _scenario(str(ref), workers, slo_s, seed, s.deployment, s.backend, s.model_paths,
                     str(s.router_profile))


@lru_cache(maxsize=4)
def _scenario(ref_s: str, workers: int, slo_s: float, seed: int, *_deployment_key: str
              ) -> Scenario:
    return build_scenario(scenario_source(), Path(ref_s), workers=workers, slo_s=slo_s,
                          seed=seed)
