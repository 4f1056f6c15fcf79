"""The router profile: feature set, normalisation, weights and fitted score quantiles.

One JSON artifact says everything the front door needs to score a prompt:

- ``features``: which definitions of the eight counts (``artifact`` or ``refined``, see
  ``features.py``);
- ``normalise``: ``quantile`` (each count mapped to its mid-rank empirical CDF over the
  normalisation set, a reference mix of short captions and long user prompts: a value
  beyond the mix's range maps to 0 or 1, so a score is bounded by the weights whatever the
  prompt) or ``zscore`` (mean and std of the normalisation set, unbounded: what profiles
  written before version 2 use);
- ``weights`` and the score ``quantiles`` of the fit set (the set whose routing fractions
  the configuration table was measured on);
- ``unreadable_quantile``: where prompts the English features cannot read (``language.py``)
  score: at that quantile of the fit set, 1.0 (the default) above every fit prompt, so
  they go heavy at any router ratio above 0.

The planner speaks in routing fractions ("send 30% heavy"); the profile's score quantiles
on its fit set turn a fraction into the score threshold θ the front door compares with.
Router scores are weighted sums of integer counts, so many prompts tie; a stable hash of
the prompt text adds at most ``TIE_BREAK`` to each score, which orders ties arbitrarily
but reproducibly and lets the realised fraction match the asked one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from planner.router.features import (
    DEFAULT_FEATURES,
    FEATURE_NAMES,
    FEATURE_SETS,
    LEGACY_FEATURES,
)

TIE_BREAK = 1e-6
QUANTILE_LEVELS = 1001
PROFILE_VERSION = 2
READABLE_VERSIONS = (1, 2)
NORMALISATIONS = ("quantile", "zscore")
DEFAULT_NORMALISE = "quantile"
UNREADABLE_QUANTILE = 1.0
REFERENCE_WEIGHTS = (0.85, 0.32, 0.72, 0.99, 0.76, 0.07, 0.78, 0.01)


class RouterProfileError(ValueError):
    """A router profile file or value is unusable."""


def tie_break(text: str) -> float:
    """A stable number in [0, TIE_BREAK) derived from the prompt text."""
    digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest()
    return TIE_BREAK * int.from_bytes(digest, "big") / 2.0**64


def check_ratio(router_ratio: float) -> float:
    try:
        r = float(router_ratio)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"router ratio must be a number in [0, 1], got {router_ratio!r}") from exc
    if not math.isfinite(r) or not 0.0 <= r <= 1.0:
        raise ValueError(f"router ratio must be a number in [0, 1], got {router_ratio!r}")
    return r


@dataclass(frozen=True)
class RouterProfile:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[float, ...]
    quantiles: tuple[float, ...]
    feature_names: tuple[str, ...] = FEATURE_NAMES
    fit_size: int = 0
    lexicon: str = ""
    source: str = ""
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = PROFILE_VERSION
    features: str = DEFAULT_FEATURES
    normalise: str = "zscore"
    knots: tuple[tuple[float, ...], ...] = ()  # quantile: distinct values, per feature
    levels: tuple[tuple[float, ...], ...] = ()  # quantile: mid-rank CDF at the knots
    norm_source: str = ""
    norm_size: int = 0
    unreadable_quantile: float = UNREADABLE_QUANTILE

    def __post_init__(self) -> None:
        n = len(self.feature_names)
        for name in ("mean", "std", "weights"):
            values = getattr(self, name)
            if len(values) != n:
                raise RouterProfileError(f"{name} has {len(values)} values, expected {n}")
            if not all(math.isfinite(v) for v in values):
                raise RouterProfileError(f"{name} has a non-finite value")
        if any(s <= 0 for s in self.std):
            raise RouterProfileError("std must be positive")
        q = np.asarray(self.quantiles, dtype=float)
        if len(q) < 2 or not np.all(np.isfinite(q)) or np.any(np.diff(q) < 0):
            raise RouterProfileError("quantiles must be at least 2 finite, non-decreasing values")
        if self.features not in FEATURE_SETS:
            raise RouterProfileError(
                f"unknown feature set {self.features!r} (one of: {', '.join(FEATURE_SETS)})")
        if self.normalise not in NORMALISATIONS:
            raise RouterProfileError(f"unknown normalisation {self.normalise!r} "
                                     f"(one of: {', '.join(NORMALISATIONS)})")
        if self.normalise == "quantile":
            _check_knots(self.knots, self.levels, n)
        if not (math.isfinite(self.unreadable_quantile) and 0.0 <= self.unreadable_quantile <= 1):
            raise RouterProfileError("unreadable_quantile must be in [0, 1]")
        object.__setattr__(self, "_w", np.asarray(self.weights, dtype=float))
        object.__setattr__(self, "_mean", np.asarray(self.mean, dtype=float))
        object.__setattr__(self, "_std", np.asarray(self.std, dtype=float))
        object.__setattr__(self, "_q", q)

    # -- scoring -----------------------------------------------------------------------
    def normalised(self, features: np.ndarray) -> np.ndarray:
        """Features mapped by the profile's normalisation, for one row or many."""
        f = np.asarray(features, dtype=float)
        if self.normalise == "zscore":
            return (f - self._mean) / self._std
        rows = np.atleast_2d(f)
        z = np.empty(rows.shape)
        for k, (x, y) in enumerate(zip(self.knots, self.levels, strict=True)):
            z[:, k] = np.interp(rows[:, k], x, y)
        return z if f.ndim == 2 else z[0]

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        """Weighted sum of normalised features (no tie-break), for one row or many."""
        return self.normalised(features) @ self._w

    def _raw_score_row(self, row: Sequence[float]) -> float:
        """``raw_scores`` of one row in plain Python: the front door's per-request path,
        where eight one-element ``np.interp`` calls cost more than the arithmetic."""
        if self.normalise == "zscore":
            return sum(w * (x - m) / s for w, x, m, s in
                       zip(self.weights, row, self.mean, self.std, strict=True))
        total = 0.0
        for w, x, xs, ys in zip(self.weights, row, self.knots, self.levels, strict=True):
            i = bisect_right(xs, x)
            if i == 0:
                y = ys[0]
            elif i == len(xs):
                y = ys[-1]
            else:
                x0, x1 = xs[i - 1], xs[i]
                y = ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)
            total += w * y
        return total

    def score(self, features: np.ndarray, text: str) -> float:
        """Hardness of one prompt's feature row, tie-break included."""
        return self._raw_score_row([float(v) for v in features]) + tie_break(text)

    def unreadable_score(self, text: str) -> float:
        """The deliberate score of a prompt the features cannot read (module doc)."""
        levels = np.linspace(0.0, 1.0, len(self._q))
        return float(np.interp(self.unreadable_quantile, levels, self._q)) + TIE_BREAK + (
            tie_break(text))

    # -- thresholds ----------------------------------------------------------------------
    def threshold_for(self, router_ratio: float) -> float:
        """θ such that about ``router_ratio`` of fit-set prompts score above it (go heavy)."""
        r = check_ratio(router_ratio)
        if r <= 0.0:
            return math.inf
        if r >= 1.0:
            return -math.inf
        q = np.asarray(self.quantiles)
        levels = np.linspace(0.0, 1.0, len(q))
        return float(np.interp(1.0 - r, levels, q))

    def heavy_fraction(self, theta: float) -> float:
        """Inverse of ``threshold_for``: the fit-set fraction scoring above θ."""
        if math.isnan(theta):
            raise ValueError("threshold must be a number")
        q = np.asarray(self.quantiles)
        levels = np.linspace(0.0, 1.0, len(q))
        if theta >= q[-1]:
            return 0.0
        if theta < q[0]:
            return 1.0
        return float(1.0 - np.interp(theta, q, levels))

    # -- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RouterProfile:
        """A profile from its JSON body; version 1 files (before feature sets and robust
        normalisation) load as ``refined`` features with z-scores, as they were fitted."""
        if not isinstance(data, dict):
            raise RouterProfileError("router profile must be a JSON object")
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise RouterProfileError(f"unsupported router profile version {version!r}")
        try:
            kwargs = {k: data[k] for k in ("mean", "std", "weights", "quantiles")}
        except KeyError as exc:
            raise RouterProfileError(f"router profile lacks {exc.args[0]!r}") from exc
        try:
            kwargs = {k: tuple(float(v) for v in vals) for k, vals in kwargs.items()}
            knots = tuple(tuple(float(v) for v in row) for row in data.get("knots", ()))
            levels = tuple(tuple(float(v) for v in row) for row in data.get("levels", ()))
            unreadable = float(data.get("unreadable_quantile", UNREADABLE_QUANTILE))
        except (TypeError, ValueError) as exc:
            raise RouterProfileError(f"router profile has a non-numeric value: {exc}") from exc
        names = tuple(data.get("feature_names", FEATURE_NAMES))
        if names != FEATURE_NAMES:
            raise RouterProfileError(f"router profile features {names} differ from {FEATURE_NAMES}")
        legacy = version == 1
        return cls(
            **kwargs, feature_names=names, fit_size=int(data.get("fit_size", 0)),
            lexicon=str(data.get("lexicon", "")), source=str(data.get("source", "")),
            created=str(data.get("created", "")), version=PROFILE_VERSION,
            features=str(data.get("features", LEGACY_FEATURES if legacy else DEFAULT_FEATURES)),
            normalise=str(data.get("normalise", "zscore")), knots=knots, levels=levels,
            norm_source=str(data.get("norm_source", "")),
            norm_size=int(data.get("norm_size", 0)), unreadable_quantile=unreadable,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RouterProfile:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise RouterProfileError(f"{p}: router profile not found") from exc
        except json.JSONDecodeError as exc:
            raise RouterProfileError(f"{p}: not JSON ({exc.msg}, line {exc.lineno})") from exc
        try:
            return cls.from_dict(data)
        except RouterProfileError as exc:
            raise RouterProfileError(f"{p}: {exc}") from exc


def _check_knots(knots: Sequence[Sequence[float]], levels: Sequence[Sequence[float]],
                 n: int) -> None:
    if len(knots) != n or len(levels) != n:
        raise RouterProfileError(f"quantile normalisation needs knots and levels for {n} "
                                 f"features, got {len(knots)} and {len(levels)}")
    for name, x, y in zip(FEATURE_NAMES, knots, levels, strict=True):
        xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if len(xa) < 1 or len(xa) != len(ya):
            raise RouterProfileError(f"{name}: knots and levels must be non-empty, same length")
        if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
            raise RouterProfileError(f"{name}: knots and levels must be finite")
        if np.any(np.diff(xa) <= 0) or np.any(np.diff(ya) < 0):
            raise RouterProfileError(f"{name}: knots must increase and levels not decrease")
        if ya[0] < 0 or ya[-1] > 1:
            raise RouterProfileError(f"{name}: levels must lie in [0, 1]")


def quantile_knots(features: np.ndarray) -> tuple[tuple[tuple[float, ...], ...],
                                                  tuple[tuple[float, ...], ...]]:
    """Per feature: its distinct values and their mid-rank empirical CDF.

    Mid-rank (share below plus half the share equal) because the counts tie heavily: a
    feature that is 0 on most prompts maps 0 to the middle of that mass, not to its top.
    """
    f = np.asarray(features, dtype=float)
    knots, levels = [], []
    for k in range(f.shape[1]):
        values, counts = np.unique(f[:, k], return_counts=True)
        below = np.cumsum(counts) - counts
        knots.append(tuple(float(v) for v in values))
        levels.append(tuple(float(v) for v in (below + 0.5 * counts) / len(f)))
    return tuple(knots), tuple(levels)


def score_quantiles(scores: np.ndarray, levels: int = QUANTILE_LEVELS) -> tuple[float, ...]:
    return tuple(float(v) for v in np.quantile(np.asarray(scores, dtype=float),
                                               np.linspace(0, 1, levels)))


def fit_profile(
    features: np.ndarray,
    texts: Sequence[str],
    weights: Sequence[float] = REFERENCE_WEIGHTS,
    *,
    lexicon: str = "",
    source: str = "",
    feature_set: str = DEFAULT_FEATURES,
    normalise: str = DEFAULT_NORMALISE,
    norm_features: np.ndarray | None = None,
    norm_source: str = "",
    unreadable_quantile: float = UNREADABLE_QUANTILE,
) -> RouterProfile:
    """Fit the normalisation and the score quantiles of a router profile.

    ``features`` (one row per text) are the fit set: its score quantiles turn a router
    ratio into θ. The normalisation is fitted on ``norm_features`` when given (a reference
    mix that includes long user prompts), else on the fit set.
    """
    f = np.asarray(features, dtype=float)
    if f.ndim != 2 or f.shape[1] != len(FEATURE_NAMES) or len(f) != len(texts):
        raise ValueError(f"features must be (n, {len(FEATURE_NAMES)}) with one row per prompt")
    if len(f) < 2:
        raise ValueError("need at least 2 prompts to fit a router profile")
    nf = f if norm_features is None else np.asarray(norm_features, dtype=float)
    if nf.ndim != 2 or nf.shape[1] != len(FEATURE_NAMES) or len(nf) < 2:
        raise ValueError(f"normalisation features must be (n >= 2, {len(FEATURE_NAMES)})")
    mean = nf.mean(axis=0)
    std = nf.std(axis=0, ddof=1)
    std[~(std > 0)] = 1.0
    knots, levels = quantile_knots(nf) if normalise == "quantile" else ((), ())
    base = RouterProfile(
        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
        weights=tuple(float(w) for w in weights), quantiles=(0.0, 0.0), fit_size=len(f),
        lexicon=lexicon, source=source, features=feature_set, normalise=normalise,
        knots=knots, levels=levels, norm_source=norm_source or source, norm_size=len(nf),
        unreadable_quantile=unreadable_quantile,
    )
    scores = base.raw_scores(f) + np.array([tie_break(t) for t in texts])
    return replace(base, quantiles=score_quantiles(scores))
