"""FID of a served image mix, read off the profiled grid for the realised routing fractions.

The hybrid profile measured FID on an 11 x 11 grid of (router ratio, discriminator reject
ratio) per pair; a window's realised fractions fall between grid points, so the surface is
interpolated bilinearly. A single model's FID is its pair rows' end point (all light, or
all heavy). Mixes the grid did not measure (a random split in place of the router's
ranking, as Proteus does) are read at the same fractions: an approximation, stated in
every report that uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from planner.cascade import CascadeConfig
from planner.registry import Registry


class FidSurface:
    def __init__(self, rows: Iterable[CascadeConfig]) -> None:
        grids: dict[tuple[int, int], dict[tuple[float, float], float]] = {}
        for c in rows:
            if c.light == c.heavy:
                continue
            grids.setdefault((c.light, c.heavy), {})[
                (round(c.router_ratio, 6), round(c.disc_ratio, 6))] = c.fid
        if not grids:
            raise ValueError("FID surface needs the profiled grid of at least one pair")
        self._grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for pair, points in grids.items():
            rs = np.array(sorted({r for r, _ in points}))
            ds = np.array(sorted({d for _, d in points}))
            z = np.full((len(rs), len(ds)), np.nan)
            for (r, d), f in points.items():
                z[np.searchsorted(rs, r), np.searchsorted(ds, d)] = f
            if np.isnan(z).any():
                raise ValueError(f"pair {pair}: the grid has holes; need every (r, d) point")
            self._grids[pair] = (rs, ds, z)
        self._single: dict[int, list[float]] = {}
        for (light, heavy), (_, _, z) in self._grids.items():
            self._single.setdefault(light, []).append(float(z[0, 0]))
            self._single.setdefault(heavy, []).append(float(z[-1, 0]))

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return sorted(self._grids)

    def single(self, model: int) -> float:
        try:
            return float(np.mean(self._single[model]))
        except KeyError:
            raise KeyError(f"no profiled FID for model {model}") from None

    def fid(self, light: int, heavy: int, router_ratio: float, disc_ratio: float) -> float:
        if light == heavy:
            return self.single(light)
        try:
            rs, ds, z = self._grids[(light, heavy)]
        except KeyError:
            raise KeyError(f"no profiled grid for pair {light}:{heavy}") from None
        r = float(np.clip(router_ratio, rs[0], rs[-1]))
        d = float(np.clip(disc_ratio, ds[0], ds[-1]))
        i = int(np.clip(np.searchsorted(rs, r) - 1, 0, len(rs) - 2))
        j = int(np.clip(np.searchsorted(ds, d) - 1, 0, len(ds) - 2))
        tr = (r - rs[i]) / (rs[i + 1] - rs[i])
        td = (d - ds[j]) / (ds[j + 1] - ds[j])
        return float((1 - tr) * (1 - td) * z[i, j] + tr * (1 - td) * z[i + 1, j]
                     + (1 - tr) * td * z[i, j + 1] + tr * td * z[i + 1, j + 1])

    def mix_fid(self, counts: Mapping[tuple[int, int], Mapping[str, int]]) -> float:
        """FID of a window's served images: ``counts[(light, heavy)]`` holds how many were
        served on the ``light``, ``direct`` (heavy) and ``rerouted`` paths under that pair;
        pairs are weighted by their image counts."""
        total, acc = 0, 0.0
        for (light, heavy), c in counts.items():
            n_light, n_direct, n_rer = c.get("light", 0), c.get("direct", 0), c.get("rerouted", 0)
            n = n_light + n_direct + n_rer
            if n == 0:
                continue
            r = n_direct / n
            runs_light = n_light + n_rer
            d = n_rer / runs_light if runs_light else 0.0
            acc += n * self.fid(light, heavy, r, d)
            total += n
        return acc / total if total else float("nan")


def fallback_model(registry: Registry, surface: FidSurface) -> tuple[int, float]:
    """``(model id, FID)`` of the cheapest model with a profiled single-model FID.

    The stand-in image of a dropped query for ``SimResult.fid_all``: the most images per
    second per worker at its best batch size (ties: the better FID). A dropped query gets no
    image at all, so this is the most lenient charge that still counts it: the cheapest
    model's image, produced at no cost.
    """
    best: tuple[float, float, int] | None = None
    for spec in registry:
        try:
            f = surface.single(spec.id)
        except KeyError:
            continue
        thr = max(spec.throughput(b) for b in spec.batch_sizes)
        key = (-thr, f, spec.id)
        if best is None or key < best:
            best = key
    if best is None:
        raise KeyError("no model of the registry has a profiled single-model FID")
    return best[2], best[1]
