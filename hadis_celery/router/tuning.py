"""Router weight tuning, measured without images.

What the router should find is the prompts that gain most from the heavy model. The
reference profile records, per prompt and model, the discriminator's probability that
the image is real (mean of 4 images). A prompt's *gain* for a pair is the heavy model's
log-odds of that score minus the light model's (log-odds, because the raw probabilities
are tiny for most prompts and a handful of outliers would otherwise dominate).

*Gain captured* at router ratio r: the gain summed over the r-fraction of prompts the
router sends heavy, divided by the gain of the best possible r-fraction (an oracle that
knows the gains). Random routing captures r * total / oracle on average. The tuning
objective is the mean capture over the pairs and over ratios 0.1-0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from hadis_celery.router.profile import REFERENCE_WEIGHTS, tie_break

DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
_EPS = 1e-6


def log_odds(q: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(q, dtype=float), _EPS, 1.0 - _EPS)
    return np.log(q / (1.0 - q))


def all_pairs(models: Iterable[int]) -> list[tuple[int, int]]:
    ms = sorted(models)
    return [(a, b) for i, a in enumerate(ms) for b in ms[i + 1 :]]


def prompt_gains(
    scores: Mapping[int, np.ndarray], pairs: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Gain per (pair, prompt): log-odds quality of the heavy model minus the light one."""
    for light, heavy in pairs:
        if light not in scores or heavy not in scores:
            raise ValueError(f"pair {light}:{heavy}: no scores for model(s) in it")
    return np.stack([log_odds(scores[h]) - log_odds(scores[lt]) for lt, h in pairs])


def _ks(n: int, ratios: Sequence[float]) -> np.ndarray:
    return np.clip(np.rint(np.asarray(ratios) * n).astype(int), 1, n)


def oracle_gain(gains: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """Best achievable summed gain per (pair, ratio)."""
    cs = np.cumsum(-np.sort(-gains, axis=1), axis=1)
    return cs[:, _ks(gains.shape[1], ratios) - 1]


def capture_table(
    scores: np.ndarray, gains: np.ndarray, ratios: Sequence[float] = DEFAULT_RATIOS
) -> np.ndarray:
    """Capture per (candidate, ratio), averaged over pairs.

    ``scores`` is (n,) for one router or (n, m) for m candidate routers at once.
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim == 1:
        s = s[:, None]
    n = s.shape[0]
    if gains.shape[1] != n:
        raise ValueError(f"{n} scores but gains for {gains.shape[1]} prompts")
    order = np.argsort(-s, axis=0, kind="stable")
    ks = _ks(n, ratios) - 1
    oracle = oracle_gain(gains, ratios)  # (P, R)
    out = np.zeros((s.shape[1], len(ks)))
    for p in range(gains.shape[0]):
        taken = np.cumsum(gains[p][order], axis=0)[ks]  # (R, m)
        out += (taken / oracle[p][:, None]).T
    return out / gains.shape[0]


def random_capture(gains: np.ndarray, ratios: Sequence[float] = DEFAULT_RATIOS) -> np.ndarray:
    """Expected capture of random routing, per ratio."""
    ks = _ks(gains.shape[1], ratios)
    expected = gains.sum(axis=1)[:, None] * (ks / gains.shape[1])[None, :]
    return (expected / oracle_gain(gains, ratios)).mean(axis=0)


def _unit(w: np.ndarray) -> np.ndarray:
    scale = np.max(np.abs(w), axis=0, keepdims=True)
    scale[scale == 0] = 1.0
    return w / scale


@dataclass
class TuneResult:
    weights: tuple[float, ...]
    objective: float
    tried: int
    best_by_round: list[float] = field(default_factory=list)


def tune_weights(
    z: np.ndarray,
    gains: np.ndarray,
    *,
    jitter: np.ndarray | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    candidates: np.ndarray | None = None,
    n_random: int = 2000,
    rounds: int = 6,
    per_round: int = 300,
    seed: int = 0,
    chunk: int = 250,
    progress: Callable[[int], None] | None = None,
) -> TuneResult:
    """Random search over weight vectors, then rounds of shrinking local perturbations.

    Starting points: the given ``candidates`` (e.g. the artifact's 400), ``n_random``
    uniform draws in [-1, 1]^d, and the least-squares direction of the mean gain on the
    normalised features. Weights are scale-free (only the ranking matters), so they are
    reported with max |w| = 1.
    """
    rng = np.random.default_rng(seed)
    n, d = z.shape
    jit = np.zeros(n) if jitter is None else np.asarray(jitter, dtype=float)

    def evaluate(w: np.ndarray) -> np.ndarray:
        w = _unit(w)
        vals = np.empty(w.shape[1])
        for i in range(0, w.shape[1], chunk):
            part = w[:, i : i + chunk]
            vals[i : i + chunk] = capture_table(z @ part + jit[:, None], gains, ratios).mean(1)
            if progress:
                progress(part.shape[1])
        return vals

    starts = [rng.uniform(-1.0, 1.0, size=(d, n_random))]
    if candidates is not None and len(candidates):
        starts.append(np.asarray(candidates, dtype=float).T)
    lsq, *_ = np.linalg.lstsq(z, gains.mean(axis=0) - gains.mean(), rcond=None)
    starts.append(lsq[:, None])
    pool = np.concatenate(starts, axis=1)
    vals = evaluate(pool)
    tried = pool.shape[1]
    best_by_round = [float(vals.max())]
    step = 0.3
    for _ in range(rounds):
        elite = pool[:, np.argsort(-vals)[:5]]
        moves = _unit(elite)[:, rng.integers(0, elite.shape[1], per_round)]
        moves = moves + rng.normal(0.0, step, size=moves.shape)
        mvals = evaluate(moves)
        tried += moves.shape[1]
        pool = np.concatenate([elite, moves], axis=1)
        vals = np.concatenate([vals[np.argsort(-vals)[:5]], mvals])
        best_by_round.append(float(vals.max()))
        step *= 0.6
    best = _unit(pool[:, [int(np.argmax(vals))]])[:, 0]
    return TuneResult(
        weights=tuple(round(float(w), 4) for w in best),
        objective=float(vals.max()),
        tried=tried,
        best_by_round=best_by_round,
    )


def split_indices(n: int, holdout: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train / held-out split of prompt indices."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1.0 - holdout)))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def tune_and_evaluate(
    feats: np.ndarray,
    texts: Sequence[str],
    gains: np.ndarray,
    *,
    holdout: float = 0.3,
    seed: int = 0,
    candidates: np.ndarray | None = None,
    n_random: int = 2000,
    rounds: int = 6,
    reference_weights: Sequence[float] = REFERENCE_WEIGHTS,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Tune on a train split; report capture on the held-out split for tuned, reference
    and random routing (normalisation fitted on the train split only)."""
    train, test = split_indices(len(texts), holdout, seed)
    mean, std = feats[train].mean(0), feats[train].std(0, ddof=1)
    std[~(std > 0)] = 1.0
    z = (feats - mean) / std
    jitter = np.array([tie_break(t) for t in texts])
    res = tune_weights(z[train], gains[:, train], jitter=jitter[train],
                       candidates=candidates, n_random=n_random, rounds=rounds,
                       seed=seed, progress=progress)

    def held_out(w: Sequence[float]) -> list[float]:
        s = z[test] @ np.asarray(w) + jitter[test]
        return [round(float(v), 4) for v in capture_table(s, gains[:, test])[0]]

    return {
        "weights": list(res.weights),
        "train_objective": round(res.objective, 4),
        "tried": res.tried,
        "train_size": len(train),
        "test_size": len(test),
        "ratios": list(DEFAULT_RATIOS),
        "held_out": {
            "tuned": held_out(res.weights),
            "reference": held_out(reference_weights),
            "random": [round(float(v), 4) for v in random_capture(gains[:, test])],
        },
    }
