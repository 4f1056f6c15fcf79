"""Prompt sets and the per-arrival workload the simulator replays.

The ImageNet captions carry recorded discriminator scores for every model. Other prompt
sets (the DiffusionDB prompts of the hardness-shift experiment) have none, so their
scores are *derived*: per model, a least-squares fit on the ImageNet set of the log-odds
score against the eight prompt features, counted with the ``refined`` definitions
whatever feature set the router profile uses (the simulated world must not change when
the router's configuration does), each clipped to the range the ImageNet prompts span,
so long DiffusionDB prompts are not extrapolated far beyond what was measured, plus a
residual vector resampled
jointly across models from the ImageNet fit (a random ImageNet prompt's residuals, so the
models' scores keep their measured correlation). A derived set inherits only what the
features explain on ImageNet, which is little: the shift it shows comes mostly from the
router sending more of the harder prompts straight to the heavy model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from planner.router import HardnessRouter
from planner.router.features import REFINED
from planner.router.prompt import validate_prompt
from planner.router.tuning import log_odds
from sim.engine import Workload
from sim.trace import Trace

QUALITY_FEATURES = REFINED  # what derived quality is fitted on (module doc)


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: list[str]
    features: np.ndarray  # (n, 8) raw feature counts
    router_score: np.ndarray  # (n,)
    quality: Mapping[int, np.ndarray]  # model id -> (n,) P(real), recorded or derived
    derived: bool = False

    def __len__(self) -> int:
        return len(self.prompts)


def valid_prompts(lines: Sequence[str]) -> list[str]:
    out = []
    for line in lines:
        try:
            out.append(validate_prompt(line))
        except ValueError:
            continue
    return out


def scored_set(name: str, prompts: Sequence[str], router: HardnessRouter,
               quality: Mapping[int, np.ndarray]) -> PromptSet:
    """A prompt set with recorded quality (one score per prompt, same order)."""
    texts = [validate_prompt(p) for p in prompts]
    feats = router.features_many(texts)
    scores = router.score_many(texts)
    for m, q in quality.items():
        if len(q) != len(texts):
            raise ValueError(f"{name}: model {m} has {len(q)} scores for {len(texts)} prompts")
    return PromptSet(name, texts, feats, scores, dict(quality))


def derived_set(name: str, prompts: Sequence[str], router: HardnessRouter, base: PromptSet,
                seed: int = 0) -> PromptSet:
    """A prompt set whose quality scores are derived from ``base`` (see module doc)."""
    texts = valid_prompts(prompts)
    fx = router.extractor
    docs = fx.parse_many(texts)
    feats = np.array([fx.features_of(d, router.profile.features) for d in docs])
    scores = router.score_many(texts)
    # The quality model's own features (module doc), independent of the router profile.
    qf = np.array([fx.features_of(d, QUALITY_FEATURES) for d in docs])
    qf_base = fx.extract_many(base.prompts, features=QUALITY_FEATURES)
    mean, std = qf_base.mean(axis=0), qf_base.std(axis=0)
    std[~(std > 0)] = 1.0

    lo, hi = qf_base.min(axis=0), qf_base.max(axis=0)

    def design(f: np.ndarray) -> np.ndarray:
        return np.hstack([np.ones((len(f), 1)), (np.clip(f, lo, hi) - mean) / std])

    xb, xn = design(qf_base), design(qf)
    models = sorted(base.quality)
    yb = np.stack([log_odds(base.quality[m]) for m in models], axis=1)
    coef, *_ = np.linalg.lstsq(xb, yb, rcond=None)
    resid = yb - xb @ coef
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(base), len(texts))
    logits = xn @ coef + resid[pick]
    quality = {m: 1.0 / (1.0 + np.exp(-logits[:, k])) for k, m in enumerate(models)}
    return PromptSet(name, texts, feats, scores, quality, derived=True)


def build_workload(trace: Trace, sets: Sequence[PromptSet]) -> Workload:
    """Per-arrival scores; ``trace.prompt_set`` picks the set of each arrival (default 0),
    and prompt indices wrap around the set's size."""
    n = len(trace)
    which = np.zeros(n, dtype=int) if trace.prompt_set is None else trace.prompt_set
    score = np.empty(n)
    models = sorted(sets[0].quality)
    quality = {m: np.empty(n) for m in models}
    for k, ps in enumerate(sets):
        sel = which == k
        idx = trace.prompt_index[sel] % len(ps)
        score[sel] = ps.router_score[idx]
        for m in models:
            quality[m][sel] = ps.quality[m][idx]
    return Workload(trace.arrival_s, score, quality, name=trace.name)
