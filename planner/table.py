"""``ProfileTable``: a named cascade configuration table with what it was built from.

Plain data shared by the SQL store, the packaged JSON (``hadis_celery/data/profile_sd35.json``)
and the planner: the registry snapshot the latencies came from, the rows, the quality
metric they carry, per-model score quantiles (so τ can be set for any reject ratio without
the raw score files), and the source files. JSON cannot hold ±inf or NaN (θ and τ use
them), so floats are written as numbers or the strings ``"inf"``, ``"-inf"``, ``"nan"``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from planner.cascade import CascadeConfig
from planner.pareto import pareto_by_pair_indices, pareto_indices
from planner.registry import Registry

FORMAT_VERSION = 1
# The packaged Pareto table of the reference profile, for machines without ../shared; made by
#   hadis profile import ../shared/reference/profile-sd35 --name sd35
#   hadis profile export sd35 hadis_celery/data/profile_sd35.json
PACKAGED_SD35 = (
    Path(__file__).resolve().parent.parent / "hadis_celery" / "data" / "profile_sd35.json"
)
QUANTILE_LEVELS = 101
METRICS = {"fid": "FID of the served image mix (lower is better)",
           "disc": "1 - mean discriminator score of the served images (lower is better)"}
_FLOAT_FIELDS = {f.name for f in fields(CascadeConfig) if f.type in ("float", float)}


class ProfileTableError(ValueError):
    """A profile table file or value is unusable."""


def encode_float(x: float) -> float | str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def decode_float(x: float | int | str | None) -> float:
    if x is None:
        return math.nan
    if isinstance(x, str):
        if x not in ("inf", "-inf", "nan"):
            raise ProfileTableError(f"not a number: {x!r}")
        return float(x)
    return float(x)


def config_to_json(c: CascadeConfig) -> dict:
    """A row as JSON: the stored fields plus the derived routing fractions and loads."""
    d = {k: encode_float(v) if k in _FLOAT_FIELDS else v for k, v in c.to_dict().items()}
    d.update(
        frac_light=c.frac_light, frac_direct=c.frac_direct, frac_rerouted=c.frac_rerouted,
        frac_heavy=c.frac_heavy,
        gpu_s_per_query={str(m): encode_float(v) for m, v in c.gpu_s_per_query().items()},
    )
    return d


def config_from_json(d: Mapping) -> CascadeConfig:
    kwargs = {}
    for f in fields(CascadeConfig):
        if f.name not in d:
            continue
        v = d[f.name]
        kwargs[f.name] = decode_float(v) if f.name in _FLOAT_FIELDS else v
    try:
        kwargs["light"], kwargs["heavy"] = int(kwargs["light"]), int(kwargs["heavy"])
        return CascadeConfig(**kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileTableError(f"bad configuration row {dict(d)!r}: {exc}") from exc


def score_quantiles(scores: Mapping[int, np.ndarray], levels: int = QUANTILE_LEVELS
                    ) -> dict[int, list[float]]:
    """Per-model quantiles of per-prompt scores at ``levels`` evenly spaced levels."""
    qs = np.linspace(0.0, 1.0, levels)
    return {int(m): [float(v) for v in np.quantile(np.asarray(s, float), qs)]
            for m, s in sorted(scores.items())}


def tau_from_quantiles(quantiles: Sequence[float], disc_ratio: float) -> float:
    """τ rejecting about ``disc_ratio`` of the light model's outputs, from its quantiles."""
    if disc_ratio <= 0.0:
        return -math.inf
    if disc_ratio >= 1.0:
        return math.inf
    q = np.asarray(quantiles, dtype=float)
    return float(np.interp(disc_ratio, np.linspace(0.0, 1.0, len(q)), q))


@dataclass(frozen=True)
class ProfileTable:
    name: str
    registry: Registry
    rows: tuple[CascadeConfig, ...]
    metric: str = "fid"
    source: str = ""
    score_quantiles: Mapping[int, Sequence[float]] = field(default_factory=dict)
    meta: Mapping = field(default_factory=dict)  # free-form: router profile, options, notes
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = 0  # the SQL history version (0: not stored)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ProfileTableError(f"unknown quality metric {self.metric!r} ({list(METRICS)})")
        if not self.rows:
            raise ProfileTableError(f"profile {self.name!r}: empty configuration table")
        ids = set(self.registry.ids())
        for c in self.rows:
            if c.light not in ids or c.heavy not in ids:
                raise ProfileTableError(
                    f"profile {self.name!r}: row {c.light}:{c.heavy} names a model not in the "
                    f"registry {sorted(ids)}")

    def pareto(self) -> list[CascadeConfig]:
        """The non-dominated rows over the whole table (see ``planner.pareto``)."""
        return [self.rows[i] for i in pareto_indices(self.rows).kept]

    def pareto_flags(self) -> tuple[list[bool], list[bool]]:
        """Per row: on the union front; on its own pair's front."""
        union = set(pareto_indices(self.rows).kept)
        per_pair = set(pareto_by_pair_indices(self.rows))
        n = len(self.rows)
        return [i in union for i in range(n)], [i in per_pair for i in range(n)]

    def with_rows(self, rows: Sequence[CascadeConfig]) -> ProfileTable:
        return replace(self, rows=tuple(rows))

    def to_dict(self, pareto_only: bool = False) -> dict:
        rows = self.pareto() if pareto_only else list(self.rows)
        return {
            "format": FORMAT_VERSION, "name": self.name, "version": self.version,
            "created": self.created, "source": self.source, "metric": self.metric,
            "metric_meaning": METRICS[self.metric],
            "cost": "batch-1 GPU-seconds per query per model (planner.pareto)",
            "pareto_only": pareto_only, "registry": self.registry.to_list(),
            "score_quantiles": {str(m): list(q) for m, q in self.score_quantiles.items()},
            "meta": dict(self.meta), "rows": [config_to_json(c) for c in rows],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ProfileTable:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT_VERSION:
            raise ProfileTableError(f"not a profile table of format {FORMAT_VERSION}")
        try:
            return cls(
                name=str(d["name"]), registry=Registry.from_list(d["registry"]),
                rows=tuple(config_from_json(r) for r in d["rows"]),
                metric=str(d.get("metric", "fid")), source=str(d.get("source", "")),
                score_quantiles={int(m): [float(v) for v in q]
                                 for m, q in dict(d.get("score_quantiles", {})).items()},
                meta=dict(d.get("meta", {})), created=str(d.get("created", "")),
                version=int(d.get("version", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ProfileTableError):
                raise
            raise ProfileTableError(f"malformed profile table: {exc!r}") from exc

    def save(self, path: str | os.PathLike[str], pareto_only: bool = False) -> None:
        """Write JSON with one configuration row (and one quantile list) per line."""
        d = self.to_dict(pareto_only)
        parts = []
        for k, v in d.items():
            if k == "rows":
                body = "[\n" + ",\n".join(f"  {json.dumps(r, allow_nan=False)}" for r in v) + "\n ]"
            elif k == "score_quantiles":
                body = "{\n" + ",\n".join(f"  {json.dumps(m)}: {json.dumps(q, allow_nan=False)}"
                                          for m, q in v.items()) + "\n }"
            else:
                body = json.dumps(v, allow_nan=False)
            parts.append(f" {json.dumps(k)}: {body}")
        Path(path).write_text("{\n" + ",\n".join(parts) + "\n}\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ProfileTable:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ProfileTableError(f"{p}: profile table not found") from exc
        except json.JSONDecodeError as exc:
            raise ProfileTableError(f"{p}:{exc.lineno}: not JSON ({exc.msg})") from exc
        try:
            return cls.from_dict(data)
        except ProfileTableError as exc:
            raise ProfileTableError(f"{p}: {exc}") from exc
