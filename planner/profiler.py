"""Live profiling: latency curves of model backends and the cascade grid from per-prompt
scores. Plain Python over anything with the backend contract (``generate(prompts, seeds)``
returning an object with ``seconds``, ``images`` and ``quality``); the CLI
(``hadis profile run``) supplies real backends and the discriminator.

Latency per batch size: ``warmup`` untimed batches first, then the median of ``repeats``
timed batches (the backend's own ``seconds``, the wall time of the batch).

Quality: each image's discriminator score per model; a grid point's quality is the mean
score of the served images. Its ``fid`` is the FID of the served image mix when the caller
supplies an ``fid_fn`` (``hadis profile run --reference-images``: ``metric="fid"``);
otherwise it holds ``1 - quality`` with ``metric="disc"`` so that lower stays better (never
presented as an FID). The FID itself is computed in the shell (``workers.quality``, with
torchmetrics); this module only decides which image each query is served.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from planner.cascade import CascadeConfig
from planner.reference_table import (
    expected_service_s,
    heavy_by_router,
    reject_threshold,
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


@dataclass(frozen=True)
class GridPoint:
    """One grid point of one pair: τ and the model that serves each image."""

    light: int
    heavy: int
    router_ratio: float
    disc_ratio: float
    tau: float
    served: np.ndarray  # model id per image (prompt-major: prompt i's k images together)

    @property
    def pair(self) -> tuple[int, int]:
        return (self.light, self.heavy)


def grid_points(
    scores: Mapping[int, np.ndarray],
    router_scores: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    router_ratios: Sequence[float] = GRID,
    disc_ratios: Sequence[float] = GRID,
    images_per_prompt: int = 1,
) -> Iterator[GridPoint]:
    """Every (pair, router ratio, discriminator ratio) with the image each query is served.

    ``router_scores`` has one score per prompt; ``scores`` one per image, ``images_per_prompt``
    (k) consecutive images per prompt, each image a query of its own (own seed). The router
    decides per prompt, so a prompt's k queries go the same way: the ``router_ratio`` share of
    prompts with the highest scores goes heavy; τ rejects the lowest ``disc_ratio`` share of
    the light images of the rest (``planner.reference_table.reject_threshold``); a rejected
    query is served the heavy model's image of the same prompt and seed.
    """
    k = int(images_per_prompt)
    if k < 1:
        raise ValueError(f"images per prompt must be >= 1, got {k}")
    rs = np.asarray(router_scores, dtype=float)
    n = len(rs) * k
    for m, s in scores.items():
        if len(s) != n:
            what = "prompts" if k == 1 else f"images ({len(rs)} prompts x {k})"
            raise ValueError(f"model {m}: {len(s)} scores for {n} {what}")
    if not pairs:
        raise ValueError("empty grid: need at least two models to form a pair")
    for light_id, heavy_id in pairs:
        lq = np.asarray(scores[light_id], dtype=float)
        for r in router_ratios:
            to_heavy = np.repeat(heavy_by_router(rs, r), k)
            for d in disc_ratios:
                tau = reject_threshold(lq[~to_heavy], d)
                served = np.where(to_heavy | (lq < tau), heavy_id, light_id)
                yield GridPoint(light_id, heavy_id, float(r), float(d), tau, served)


def served_mean(values: Mapping[int, np.ndarray], served: np.ndarray) -> float:
    """Mean over queries of a per-image value (discriminator or CLIP score) of the image
    each query is served (``served``: model id per image)."""
    out = np.empty(len(served))
    for m in np.unique(served):
        mask = served == m
        out[mask] = np.asarray(values[int(m)], dtype=float)[mask]
    return float(out.mean())


def grid_table(
    scores: Mapping[int, np.ndarray],
    router_scores: np.ndarray,
    registry: Registry,
    pairs: Sequence[tuple[int, int]] | None = None,
    router_ratios: Sequence[float] = GRID,
    disc_ratios: Sequence[float] = GRID,
    theta_fn: Callable[[float], float] | None = None,
    fid_fn: FidFn | None = None,
    images_per_prompt: int = 1,
) -> list[CascadeConfig]:
    """The cascade table over the grid, from per-image scores and per-prompt router scores.

    Routing as in ``grid_points``; θ from ``theta_fn`` (NaN without); quality is the mean
    discriminator score of the served images; ``fid`` from ``fid_fn(pair, served)`` when
    given (metric "fid": the FID of the served image mix), else ``1 - quality`` (metric
    "disc").
    """
    pairs = list(pairs) if pairs is not None else default_pairs(registry, list(scores))
    out: list[CascadeConfig] = []
    for p in grid_points(scores, router_scores, pairs, router_ratios, disc_ratios,
                         images_per_prompt):
        light, heavy = registry.get(p.light), registry.get(p.heavy)
        quality = served_mean(scores, p.served)
        if fid_fn is not None:
            fid, metric = float(fid_fn(p.pair, p.served)), "fid"
        else:
            fid, metric = 1.0 - quality, "disc"
        r, d = p.router_ratio, p.disc_ratio
        out.append(CascadeConfig(
            light=p.light, heavy=p.heavy, router_ratio=r,
            theta=theta_fn(r) if theta_fn is not None else math.nan,
            disc_ratio=d, tau=p.tau, fid=fid, quality=quality,
            service_s=expected_service_s(light.latency_b1, heavy.latency_b1, r, d),
            light_s=light.latency_b1, heavy_s=heavy.latency_b1, metric=metric,
        ))
    return out
