"""The router profile: normalisation, weights and fitted score quantiles as one artifact.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from hadis_celery.router.features import FEATURE_NAMES

TIE_BREAK = 1e-6
QUANTILE_LEVELS = 1001
PROFILE_VERSION = 1
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

    # -- scoring -----------------------------------------------------------------------
    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        """Weighted sum of z-normalised features (no tie-break), for one row or many."""
        z = (np.asarray(features, dtype=float) - np.asarray(self.mean)) / np.asarray(self.std)
        return z @ np.asarray(self.weights)

    def score(self, features: np.ndarray, text: str) -> float:
        return float(self.raw_scores(features)) + tie_break(text)

    def with_weights(self, weights: Sequence[float], scores: np.ndarray) -> RouterProfile:
        """The same normalisation with new weights; quantiles refitted on ``scores``."""
        return RouterProfile(
            mean=self.mean, std=self.std, weights=tuple(float(w) for w in weights),
            quantiles=score_quantiles(scores), feature_names=self.feature_names,
            fit_size=len(scores), lexicon=self.lexicon, source=self.source,
        )

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
        if not isinstance(data, dict):
            raise RouterProfileError("router profile must be a JSON object")
        if data.get("version") != PROFILE_VERSION:
            raise RouterProfileError(f"unsupported router profile version {data.get('version')!r}")
        try:
            kwargs = {k: data[k] for k in ("mean", "std", "weights", "quantiles")}
        except KeyError as exc:
            raise RouterProfileError(f"router profile lacks {exc.args[0]!r}") from exc
        try:
            kwargs = {k: tuple(float(v) for v in vals) for k, vals in kwargs.items()}
        except (TypeError, ValueError) as exc:
            raise RouterProfileError(f"router profile has a non-numeric value: {exc}") from exc
        names = tuple(data.get("feature_names", FEATURE_NAMES))
        if names != FEATURE_NAMES:
            raise RouterProfileError(f"router profile features {names} differ from {FEATURE_NAMES}")
        return cls(
            **kwargs, feature_names=names, fit_size=int(data.get("fit_size", 0)),
            lexicon=str(data.get("lexicon", "")), source=str(data.get("source", "")),
            created=str(data.get("created", "")), version=PROFILE_VERSION,
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
) -> RouterProfile:
    """Fit normalisation on ``features`` (one row per text) and the score quantiles."""
    f = np.asarray(features, dtype=float)
    if f.ndim != 2 or f.shape[1] != len(FEATURE_NAMES) or len(f) != len(texts):
        raise ValueError(f"features must be (n, {len(FEATURE_NAMES)}) with one row per prompt")
    if len(f) < 2:
        raise ValueError("need at least 2 prompts to fit a router profile")
    mean = f.mean(axis=0)
    std = f.std(axis=0, ddof=1)
    std[~(std > 0)] = 1.0
    base = RouterProfile(
        mean=tuple(mean), std=tuple(std), weights=tuple(float(w) for w in weights),
        quantiles=(0.0, 0.0), fit_size=len(f), lexicon=lexicon, source=source,
    )
    scores = base.raw_scores(f) + np.array([tie_break(t) for t in texts])
    return RouterProfile(**{**base.to_dict(), "quantiles": score_quantiles(scores)})
