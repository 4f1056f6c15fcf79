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

from planner.router.profile import REFERENCE_WEIGHTS, fit_profile, tie_break

DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
SHIFT_PENALTY = 10.0
# The search's size: 6,000 random starts and 10 rounds of 600 local moves (about 13,000
# candidates, under a minute); 2,000 x 6 x 300 left about 0.005 of held-out capture behind.
DEFAULT_RANDOM = 6000
DEFAULT_ROUNDS = 10
DEFAULT_PER_ROUND = 600
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


def heavy_shares(
    fit_scores: np.ndarray, other_scores: np.ndarray, ratios: Sequence[float] = DEFAULT_RATIOS
) -> np.ndarray:
    """Share of ``other`` prompts above the fit set's r-threshold, per (ratio, candidate).

    The threshold is the fit set's (1 - r) score quantile, as ``RouterProfile`` sets θ.
    Scores are (n,) for one router or (n, m) for m candidates.
    """
    fit = np.asarray(fit_scores, dtype=float)
    other = np.asarray(other_scores, dtype=float)
    if fit.ndim == 1:
        fit, other = fit[:, None], other[:, None]
    theta = np.quantile(fit, 1.0 - np.asarray(ratios), axis=0)  # (R, m)
    return (other[None, :, :] > theta[:, None, :]).mean(axis=1)


def shift_shortfall(
    fit_scores: np.ndarray, other_scores: np.ndarray, ratios: Sequence[float] = DEFAULT_RATIOS
) -> np.ndarray:
    """Per candidate: the largest r - (share of ``other`` sent heavy at r), floored at 0."""
    shares = heavy_shares(fit_scores, other_scores, ratios)
    return np.maximum(np.asarray(ratios)[:, None] - shares, 0.0).max(axis=0)


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
    shift_shortfall: float = 0.0


def tune_weights(
    z: np.ndarray,
    gains: np.ndarray,
    *,
    jitter: np.ndarray | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    candidates: np.ndarray | None = None,
    n_random: int = DEFAULT_RANDOM,
    rounds: int = DEFAULT_ROUNDS,
    per_round: int = DEFAULT_PER_ROUND,
    seed: int = 0,
    chunk: int = 250,
    nonnegative: bool = False,
    shift: np.ndarray | None = None,
    shift_jitter: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> TuneResult:
    """Random search over weight vectors, then rounds of shrinking local perturbations.

    Starting points: the given ``candidates`` (e.g. the artifact's 400), ``n_random``
    uniform draws in [-1, 1]^d, and the least-squares direction of the mean gain on the
    normalised features. Weights are scale-free (only the ranking matters), so they are
    reported with max |w| = 1. ``nonnegative`` searches w >= 0 only (draws in [0, 1]^d,
    every start and move clipped at 0): each feature may only add hardness, so a prompt
    with more of everything never scores easier (see ``tune_and_evaluate``).

    ``shift`` (normalised features of a prompt set without gains, e.g. long user prompts)
    adds the *shift constraint*: at every tuning ratio r, the share of ``shift`` prompts
    scoring above the fit set's r-threshold must be at least r. A candidate's objective
    loses ``SHIFT_PENALTY`` per point of shortfall, so feasible candidates rank first and
    the search still climbs toward feasibility; ``TuneResult.shift_shortfall`` reports the
    winner's (0 when the constraint holds).
    """
    rng = np.random.default_rng(seed)
    n, d = z.shape
    jit = np.zeros(n) if jitter is None else np.asarray(jitter, dtype=float)
    low = 0.0 if nonnegative else -1.0

    def bound(w: np.ndarray) -> np.ndarray:
        return np.maximum(w, 0.0) if nonnegative else w

    sz = None if shift is None else np.asarray(shift, dtype=float)
    sjit = (np.zeros(len(sz)) if sz is not None and shift_jitter is None
            else np.asarray(shift_jitter, dtype=float) if sz is not None else None)

    def evaluate(w: np.ndarray) -> np.ndarray:
        w = _unit(w)
        vals = np.empty(w.shape[1])
        for i in range(0, w.shape[1], chunk):
            part = w[:, i : i + chunk]
            s = z @ part + jit[:, None]
            vals[i : i + chunk] = capture_table(s, gains, ratios).mean(1)
            if sz is not None:
                vals[i : i + chunk] -= SHIFT_PENALTY * shift_shortfall(s, sz @ part + sjit[:, None],
                                                                       ratios)
            if progress:
                progress(part.shape[1])
        return vals

    starts = [rng.uniform(low, 1.0, size=(d, n_random))]
    if candidates is not None and len(candidates):
        starts.append(np.asarray(candidates, dtype=float).T)
    lsq, *_ = np.linalg.lstsq(z, gains.mean(axis=0) - gains.mean(), rcond=None)
    starts.append(lsq[:, None])
    pool = bound(np.concatenate(starts, axis=1))
    vals = evaluate(pool)
    tried = pool.shape[1]
    best_by_round = [float(vals.max())]
    step = 0.3
    for _ in range(rounds):
        elite = pool[:, np.argsort(-vals)[:5]]
        moves = _unit(elite)[:, rng.integers(0, elite.shape[1], per_round)]
        moves = bound(moves + rng.normal(0.0, step, size=moves.shape))
        mvals = evaluate(moves)
        tried += moves.shape[1]
        pool = np.concatenate([elite, moves], axis=1)
        vals = np.concatenate([vals[np.argsort(-vals)[:5]], mvals])
        best_by_round.append(float(vals.max()))
        step *= 0.6
    best = _unit(pool[:, [int(np.argmax(vals))]])[:, 0]
    weights = tuple(round(float(w), 4) for w in best)
    shortfall = 0.0
    if sz is not None:
        w = np.asarray(weights)[:, None]
        shortfall = float(shift_shortfall(z @ w + jit[:, None], sz @ w + sjit[:, None],
                                          ratios)[0])
    return TuneResult(
        weights=weights,
        objective=float(vals.max()),
        tried=tried,
        best_by_round=best_by_round,
        shift_shortfall=shortfall,
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
    n_random: int = DEFAULT_RANDOM,
    rounds: int = DEFAULT_ROUNDS,
    per_round: int = DEFAULT_PER_ROUND,
    reference_weights: Sequence[float] = REFERENCE_WEIGHTS,
    normalise: str = "quantile",
    shift_feats: np.ndarray | None = None,
    shift_texts: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Tune on a train split; report capture on the held-out split for tuned, reference
    and random routing.

    The normalisation (``RouterProfile.normalise``) uses no gains, so it is fitted as the
    shipped profile's is: on every fit prompt plus, when given, every ``shift_feats`` row
    (prompts without gains, e.g. long user prompts): the reference mix. The weights, which
    do use gains, see the train split only. The shift prompts' train split sets the shift
    constraint of ``tune_weights``; their held-out split gives the reported heavy shares,
    at the fit set's thresholds.
    """
    train, test = split_indices(len(texts), holdout, seed)
    mix = feats
    if shift_feats is not None:
        if shift_texts is None or len(shift_texts) != len(shift_feats):
            raise ValueError("shift_texts must give one text per row of shift_feats")
        s_train, s_test = split_indices(len(shift_texts), holdout, seed)
        mix = np.vstack([mix, shift_feats])
    norm = fit_profile(feats, texts, reference_weights, normalise=normalise,
                       norm_features=mix)
    z = norm.normalised(feats)
    jitter = np.array([tie_break(t) for t in texts])
    shift_z = shift_jit = None
    if shift_feats is not None:
        shift_z = norm.normalised(shift_feats)
        shift_jit = np.array([tie_break(t) for t in shift_texts])
    res = tune_weights(z[train], gains[:, train], jitter=jitter[train],
                       candidates=candidates, n_random=n_random, rounds=rounds,
                       per_round=per_round, seed=seed, progress=progress,
                       shift=None if shift_z is None else shift_z[s_train],
                       shift_jitter=None if shift_jit is None else shift_jit[s_train])

    def held_out(w: Sequence[float]) -> list[float]:
        s = z[test] @ np.asarray(w) + jitter[test]
        return [round(float(v), 4) for v in capture_table(s, gains[:, test])[0]]

    out = {
        "weights": list(res.weights),
        "normalise": normalise,
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
    if shift_z is not None:
        w = np.asarray(res.weights)
        shares = heavy_shares(z[train] @ w + jitter[train], shift_z[s_test] @ w + shift_jit[s_test])
        out["shift"] = {
            "train_size": len(s_train), "test_size": len(s_test),
            "shortfall": round(res.shift_shortfall, 4),
            "held_out_heavy_share": [round(float(v), 4) for v in shares[:, 0]],
        }
    return out
