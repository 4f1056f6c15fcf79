"""The cascade configuration table built from the paper artifact's offline profile.

Input: a profile folder holding ``config_results_hybrid.csv`` (one row per pair and grid
point: ``light_model, heavy_model, router_ratio, disc_ratio, threshold, latency, fid``)
and ``scores_model_K.txt`` (per-image discriminator scores, 4 images per prompt).

Each CSV row becomes a :class:`CascadeConfig`:

* θ: ``router_profile.threshold_for(router_ratio)`` (the router's fitted score quantiles)
  when a router profile is given, else NaN.
* τ: the discriminator rejects the lowest ``disc_ratio`` share of the light model's
  recorded per-prompt scores: with the sorted scores ``s`` of the ``n`` prompts that run
  light and ``k = round(disc_ratio * n)``, τ is the midpoint ``(s[k-1] + s[k]) / 2``
  (−inf for ``k = 0``: nothing rejected; +inf for ``k = n``: everything rejected), and
  the rule "reject when score < τ" rejects exactly ``k`` prompts barring ties. The prompts
  that run light are all prompts, or, when ``router_scores`` are given, those the router
  does not send heavy (the ``router_ratio`` share with the highest scores goes heavy).
* fid: the CSV's measured FID of the routed image mix.
* service_s, light_s, heavy_s: from the registry's batch-1 latencies, so the table follows
  the registry (the CSV's ``latency`` column is checked against it and only logged).
* quality: the mean recorded score of the image served to each prompt (light image when
  accepted, heavy image otherwise), computed only when ``router_scores`` are given
  (NaN otherwise: which prompts the router sends heavy is unknown without them).

Every malformed input raises :class:`ProfileDataError` with ``file:line: what``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from planner.cascade import CascadeConfig
from planner.reference import ReferenceDataError, read_model_scores
from planner.registry import Registry

if TYPE_CHECKING:
    from planner.router.profile import RouterProfile

log = logging.getLogger(__name__)

HYBRID_CSV = "config_results_hybrid.csv"
HYBRID_COLUMNS = (
    "light_model", "heavy_model", "router_ratio", "disc_ratio", "threshold", "latency", "fid",
)
# The CSV rounds fractions and latencies to 2 decimals.
THRESHOLD_TOL = 0.011
LATENCY_REL_TOL = 0.02


class ProfileDataError(ValueError):
    """A profile input file is missing or malformed (message: ``file:line: what``)."""


def _number(path: Path, lineno: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ProfileDataError(
            f"{path}:{lineno}: column {column}: not a number: {text!r}"
        ) from None
    if not math.isfinite(value):
        raise ProfileDataError(f"{path}:{lineno}: column {column}: not finite: {text!r}")
    return value


def _model_id(path: Path, lineno: int, column: str, text: str, registry: Registry) -> int:
    value = _number(path, lineno, column, text)
    if value != int(value):
        raise ProfileDataError(f"{path}:{lineno}: column {column}: not a model id: {text!r}")
    mid = int(value)
    if mid not in registry.ids():
        raise ProfileDataError(
            f"{path}:{lineno}: column {column}: unknown model id {mid} "
            f"(registry has {registry.ids()})"
        )
    return mid


def read_hybrid_csv(path: str | os.PathLike[str], registry: Registry) -> list[dict]:
    """Parse and check the hybrid CSV: one dict per row, plus its ``line`` number."""
    p = Path(path)
    if not p.is_file():
        raise ProfileDataError(f"{p}: not found")
    rows: list[dict] = []
    seen: dict[tuple, int] = {}
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ProfileDataError(f"{p}:1: empty file (expected a header)")
        if tuple(h.strip() for h in header) != HYBRID_COLUMNS:
            raise ProfileDataError(
                f"{p}:1: header {','.join(header)!r}, expected {','.join(HYBRID_COLUMNS)!r}"
            )
        for lineno, cells in enumerate(reader, 2):
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(HYBRID_COLUMNS):
                raise ProfileDataError(
                    f"{p}:{lineno}: {len(cells)} columns, expected {len(HYBRID_COLUMNS)}"
                )
            c = dict(zip(HYBRID_COLUMNS, (x.strip() for x in cells), strict=True))
            light = _model_id(p, lineno, "light_model", c["light_model"], registry)
            heavy = _model_id(p, lineno, "heavy_model", c["heavy_model"], registry)
            if light == heavy:
                raise ProfileDataError(f"{p}:{lineno}: light and heavy model are both {light}")
            row = {"light": light, "heavy": heavy, "line": lineno}
            for col in HYBRID_COLUMNS[2:]:
                row[col] = _number(p, lineno, col, c[col])
            for col in ("router_ratio", "disc_ratio", "threshold"):
                if not 0.0 <= row[col] <= 1.0:
                    raise ProfileDataError(f"{p}:{lineno}: {col} {row[col]} outside [0, 1]")
            if row["latency"] < 0:
                raise ProfileDataError(f"{p}:{lineno}: negative latency {row['latency']}")
            if row["fid"] <= 0:
                raise ProfileDataError(f"{p}:{lineno}: fid {row['fid']} must be positive")
            r, d = row["router_ratio"], row["disc_ratio"]
            total = r + (1.0 - r) * d
            if abs(total - row["threshold"]) > THRESHOLD_TOL:
                raise ProfileDataError(
                    f"{p}:{lineno}: threshold {row['threshold']} is not "
                    f"router_ratio + (1 - router_ratio) * disc_ratio = {total:.3f}"
                )
            key = (light, heavy, r, d)
            if key in seen:
                raise ProfileDataError(
                    f"{p}:{lineno}: duplicate grid point {key} (first on line {seen[key]})"
                )
            seen[key] = lineno
            rows.append(row)
    if not rows:
        raise ProfileDataError(f"{p}: empty grid (no data rows)")
    return rows


def csv_latencies(rows: Sequence[dict]) -> dict[int, float]:
    """Batch-1 seconds per model read off the CSV's ``latency`` column: a row that sends
    nothing heavy (threshold 0) costs the light model's time, a row with router_ratio 1
    the heavy model's. A profile of other models carries its own latencies this way."""
    out: dict[int, list[float]] = {}
    for r in rows:
        if r["threshold"] == 0 and r["latency"] > 0:
            out.setdefault(r["light"], []).append(r["latency"])
        if r["router_ratio"] == 1 and r["latency"] > 0:
            out.setdefault(r["heavy"], []).append(r["latency"])
    return {m: float(np.median(v)) for m, v in out.items()}


def expected_service_s(light_s: float, heavy_s: float, router_ratio: float,
                       disc_ratio: float) -> float:
    """Expected service seconds per query: light runs, direct heavy runs, reroutes (both)."""
    r, d = router_ratio, disc_ratio
    return (1 - r) * (1 - d) * light_s + r * heavy_s + (1 - r) * d * (light_s + heavy_s)


def reject_threshold(light_scores: np.ndarray, disc_ratio: float) -> float:
    """τ rejecting (score < τ) the lowest ``disc_ratio`` share of ``light_scores``."""
    s = np.sort(np.asarray(light_scores, dtype=float))
    n = len(s)
    k = int(round(disc_ratio * n))
    if n == 0 or k <= 0:
        return -math.inf
    if k >= n:
        return math.inf
    return float((s[k - 1] + s[k]) / 2.0)


def heavy_by_router(router_scores: np.ndarray, router_ratio: float) -> np.ndarray:
    """Boolean mask: the ``router_ratio`` share of prompts with the highest router scores."""
    n = len(router_scores)
    k = int(round(router_ratio * n))
    mask = np.zeros(n, dtype=bool)
    if k > 0:
        mask[np.argsort(-np.asarray(router_scores, dtype=float), kind="stable")[:k]] = True
    return mask


def served_quality(light_q: np.ndarray, heavy_q: np.ndarray, to_heavy: np.ndarray,
                   tau: float) -> float:
    """Mean score of the served images: heavy for routed or rejected prompts, else light."""
    rejected = ~to_heavy & (light_q < tau)
    served = np.where(to_heavy | rejected, heavy_q, light_q)
    return float(served.mean())


def load_scores(profile_dir: str | os.PathLike[str], n_prompts: int | None = None
                ) -> dict[int, np.ndarray]:
    """Per-prompt scores of every ``scores_model_K.txt``; all files must cover one prompt set."""
    try:
        scores = read_model_scores(profile_dir, n_prompts)
    except ReferenceDataError as exc:
        raise ProfileDataError(str(exc)) from exc
    sizes = {k: len(v) for k, v in scores.items()}
    if len(set(sizes.values())) > 1:
        first = min(sizes)
        for k, size in sizes.items():
            if size != sizes[first]:
                raise ProfileDataError(
                    f"{Path(profile_dir) / f'scores_model_{k}.txt'}: {size} prompts scored, "
                    f"scores_model_{first}.txt has {sizes[first]}"
                )
    return scores


def load_reference_table(
    profile_dir: Path,
    registry: Registry,
    router_profile: RouterProfile | None = None,
    *,
    router_scores: Sequence[float] | np.ndarray | None = None,
    n_prompts: int | None = None,
    scores: dict[int, np.ndarray] | None = None,
) -> list[CascadeConfig]:
    """Every row of ``config_results_hybrid.csv`` as a ``CascadeConfig``, in CSV order.

    ``router_profile`` (a ``RouterProfile``) gives θ; ``router_scores`` (one per prompt of
    the profiled prompt set, same order as the score files) make τ conditional on the
    router and give the mean served quality. ``n_prompts`` checks the score files' size.
    """
    profile_dir = Path(profile_dir)
    rows = read_hybrid_csv(profile_dir / HYBRID_CSV, registry)
    if scores is None:
        scores = load_scores(profile_dir, n_prompts)
    csv_path = profile_dir / HYBRID_CSV
    for row in rows:
        for col, mid in (("light_model", row["light"]), ("heavy_model", row["heavy"])):
            if mid not in scores:
                raise ProfileDataError(
                    f"{csv_path}:{row['line']}: {col} {mid} has no scores_model_{mid}.txt "
                    f"in {profile_dir}"
                )
    n = len(next(iter(scores.values())))
    rs = None
    if router_scores is not None:
        rs = np.asarray(router_scores, dtype=float)
        if rs.shape != (n,) or not np.all(np.isfinite(rs)):
            raise ProfileDataError(
                f"{profile_dir}: {rs.size} router scores for {n} scored prompts "
                "(or a non-finite score)"
            )
    out: list[CascadeConfig] = []
    mask_cache: dict[float, np.ndarray] = {}
    warned = False
    for row in rows:
        light, heavy = registry.get(row["light"]), registry.get(row["heavy"])
        r, d = row["router_ratio"], row["disc_ratio"]
        lq, hq = scores[light.id], scores[heavy.id]
        if rs is not None:
            if r not in mask_cache:
                mask_cache[r] = heavy_by_router(rs, r)
            to_heavy = mask_cache[r]
            tau = reject_threshold(lq[~to_heavy], d)
            quality = served_quality(lq, hq, to_heavy, tau)
        else:
            tau = reject_threshold(lq, d)
            quality = math.nan
        service = expected_service_s(light.latency_b1, heavy.latency_b1, r, d)
        if not warned and abs(service - row["latency"]) > LATENCY_REL_TOL * max(service, 1e-9):
            log.info("%s:%d: CSV latency %.3f s differs from the registry's %.3f s "
                     "(the registry wins)", csv_path, row["line"], row["latency"], service)
            warned = True
        out.append(CascadeConfig(
            light=light.id, heavy=heavy.id, router_ratio=r,
            theta=router_profile.threshold_for(r) if router_profile is not None else math.nan,
            disc_ratio=d, tau=tau, fid=row["fid"], quality=quality, service_s=service,
            light_s=light.latency_b1, heavy_s=heavy.latency_b1, metric="fid",
        ))
    return out
