"""Live profiling: latency curves of model backends and the cascade grid from per-prompt
scores. Plain Python over anything with the backend contract (``generate(prompts, seeds)``
returning an object with ``seconds``, ``images`` and ``quality``); the CLI
(``hadis profile run``) supplies real backends and the discriminator.

Latency per batch size: ``warmup`` untimed batches first, then the median of ``repeats``
timed batches (the backend's own ``seconds``, the wall time of the batch).

Quality without FID: each prompt's discriminator score per model; a grid point's quality
is the mean score of the served images, and its ``fid`` field holds ``1 - quality`` with
``metric="disc"`` so that lower stays better (never presented as an FID).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from planner.cascade import CascadeConfig
from planner.reference_table import (
    expected_service_s,
    heavy_by_router,
    reject_threshold,
    served_quality,
)
from planner.registry import ModelSpec, Registry

GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
ScoreFn = Callable[[Sequence[Any], Sequence[str]], Sequence[float]]
FidFn = Callable[[tuple[int, int], np.ndarray], float]  # pair, served model id per prompt


class Backendlike(Protocol):
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> Any: ...


def _tick(progress: Callable[[int], object] | None, n: int = 1) -> None:
    if progress is not None:
        progress(n)


def measure_latency(
    backend: Backendlike,
    prompts: Sequence[str],
    batch_sizes: Iterable[int],
    repeats: int = 3,
    warmup: int = 1,
    progress: Callable[[int], object] | None = None,
) -> dict[int, float]:
    """Median seconds per batch for each batch size (warm-up batches excluded)."""
    if not prompts:
        raise ValueError("no prompts to profile with")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    out: dict[int, float] = {}
    for b in sorted(set(int(x) for x in batch_sizes)):
        if b < 1:
            raise ValueError(f"batch size must be >= 1, got {b}")
        batch = [prompts[i % len(prompts)] for i in range(b)]
        seeds = list(range(b))
        for _ in range(warmup):
            backend.generate(batch, seeds)
            _tick(progress)
        times = []
        for _ in range(repeats):
            times.append(float(backend.generate(batch, seeds).seconds))
            _tick(progress)
        med = statistics.median(times)
        if not (med > 0 and math.isfinite(med)):
            raise ValueError(f"batch size {b}: measured {med} s (must be positive)")
        out[b] = med
    return out


def score_prompts(
    backend: Backendlike,
    prompts: Sequence[str],
    batch: int,
    score_fn: ScoreFn | None = None,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Per-prompt quality of one model: the backend's own scores (replay) or ``score_fn``
    (the discriminator) over its images. Seeds are ``seed + prompt index``."""
    out: list[float] = []
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start:start + batch])
        gen = backend.generate(chunk, [seed + start + i for i in range(len(chunk))])
        quality = gen.quality
        if quality is None:
            if score_fn is None:
                raise ValueError("the backend returns no scores and no discriminator is set")
            quality = score_fn(gen.images, chunk)
        if len(quality) != len(chunk):
            raise ValueError(f"{len(quality)} scores for a batch of {len(chunk)} prompts")
        out.extend(float(q) for q in quality)
        _tick(progress, len(chunk))
    arr = np.asarray(out)
    if not np.all(np.isfinite(arr)):
        raise ValueError("a quality score is not finite")
    return arr


def with_latency(spec: ModelSpec, latency: Mapping[int, float]) -> ModelSpec:
    """The registry entry with measured seconds per batch size."""
    return replace(spec, latency={int(b): float(s) for b, s in latency.items()})


def default_pairs(registry: Registry, models: Sequence[int] | None = None
                  ) -> list[tuple[int, int]]:
    """Every (light, heavy) pair among ``models``, light = the faster at batch 1."""
    specs = sorted((registry.get(m) for m in (models or registry.ids())),
                   key=lambda s: (s.latency_b1, s.id))
    return [(a.id, b.id) for i, a in enumerate(specs) for b in specs[i + 1:]]


def grid_table(
    scores: Mapping[int, np.ndarray],
    router_scores: np.ndarray,
    registry: Registry,
    pairs: Sequence[tuple[int, int]] | None = None,
    router_ratios: Sequence[float] = GRID,
    disc_ratios: Sequence[float] = GRID,
    theta_fn: Callable[[float], float] | None = None,
    fid_fn: FidFn | None = None,
) -> list[CascadeConfig]:
    """The cascade table over the grid, from per-prompt scores and router scores.

    For each pair and grid point: the ``router_ratio`` share with the highest router
    scores goes heavy; τ rejects the lowest ``disc_ratio`` share of the rest (see
    ``planner.reference_table.reject_threshold``); θ from ``theta_fn`` (NaN without);
    quality is the mean served score; ``fid`` from ``fid_fn`` when given (metric "fid"),
    else ``1 - quality`` (metric "disc").
    """
    rs = np.asarray(router_scores, dtype=float)
    n = len(rs)
    for m, s in scores.items():
        if len(s) != n:
            raise ValueError(f"model {m}: {len(s)} scores for {n} prompts")
    pairs = list(pairs) if pairs is not None else default_pairs(registry, list(scores))
    if not pairs:
        raise ValueError("empty grid: need at least two models to form a pair")
    out: list[CascadeConfig] = []
    for light_id, heavy_id in pairs:
        light, heavy = registry.get(light_id), registry.get(heavy_id)
        lq, hq = np.asarray(scores[light_id]), np.asarray(scores[heavy_id])
        for r in router_ratios:
            to_heavy = heavy_by_router(rs, r)
            for d in disc_ratios:
                tau = reject_threshold(lq[~to_heavy], d)
                quality = served_quality(lq, hq, to_heavy, tau)
                if fid_fn is not None:
                    served = np.where(to_heavy | (lq < tau), heavy_id, light_id)
                    fid, metric = float(fid_fn((light_id, heavy_id), served)), "fid"
                else:
                    fid, metric = 1.0 - quality, "disc"
                out.append(CascadeConfig(
                    light=light_id, heavy=heavy_id, router_ratio=float(r),
                    theta=theta_fn(r) if theta_fn is not None else math.nan,
                    disc_ratio=float(d), tau=tau, fid=fid, quality=quality,
                    service_s=expected_service_s(light.latency_b1, heavy.latency_b1, r, d),
                    light_s=light.latency_b1, heavy_s=heavy.latency_b1, metric=metric,
                ))
    return out
