"""Router benchmark: single-prompt latency, batch throughput against a plain spaCy loop,
and held-out gain capture of tuned, reference and random weights.

Run from the repo root: ``python -m bench.router``. The last line is one JSON object.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from hadis_celery.reference import read_model_scores, read_prompts, reference_path
from hadis_celery.router import FeatureExtractor, HardnessRouter
from hadis_celery.router.features import SPACY_MODELS
from hadis_celery.router.profile import fit_profile
from hadis_celery.router.tuning import all_pairs, prompt_gains, tune_and_evaluate

SINGLE_N = 1000
BATCH_N = 1500
RATIO = 0.3


def main() -> dict:
    import spacy

    prompts = read_prompts(reference_path("prompts", "imagenet1k_captions_5k.txt"))
    extractor = FeatureExtractor(reference_path("router", "concreteness.csv"))
    t0 = time.perf_counter()
    feats = extractor.extract_many(prompts)
    print(f"features of {len(prompts)} prompts: {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    profile = fit_profile(feats, prompts)

    # Single prompts, no cache hits: what the front door pays per request.
    router = HardnessRouter(profile, extractor, cache_size=0)
    for p in prompts[:50]:
        router.score(p)
    single = []
    for p in prompts[100 : 100 + SINGLE_N]:
        t = time.perf_counter()
        router.score(p)
        single.append(time.perf_counter() - t)

    # Batches, against the naive loop (full pipeline, one nlp(p) per prompt), same prompts.
    batch_prompts = prompts[2000 : 2000 + BATCH_N]
    t = time.perf_counter()
    HardnessRouter(profile, extractor, cache_size=0).score_many(batch_prompts)
    batch_s = time.perf_counter() - t
    nlp = spacy.load(_installed_model())
    for p in prompts[:20]:
        nlp(p)
    t = time.perf_counter()
    for p in batch_prompts:
        nlp(p)
    naive_s = time.perf_counter() - t

    # Held-out gain capture (pairs: all six of the sd35 profile).
    scores = read_model_scores(reference_path("profile-sd35"), len(prompts))
    gains = prompt_gains(scores, all_pairs(scores))
    cands = np.loadtxt(reference_path("router", "feat_weight_candidates.txt"), ndmin=2)
    tuned = tune_and_evaluate(feats, prompts, gains, candidates=cands)
    k = tuned["ratios"].index(RATIO)

    return {
        "single_p50_ms": round(float(np.median(single)) * 1e3, 3),
        "single_p99_ms": round(float(np.percentile(single, 99)) * 1e3, 3),
        "batch_prompts_per_s": round(BATCH_N / batch_s, 1),
        "naive_prompts_per_s": round(BATCH_N / naive_s, 1),
        "batch_speedup": round(naive_s / batch_s, 2),
        "router_ratio": RATIO,
        "tuned_gain_capture": tuned["held_out"]["tuned"][k],
        "reference_weights_gain_capture": tuned["held_out"]["reference"][k],
        "random_gain_capture": tuned["held_out"]["random"][k],
        "tuned_weights": tuned["weights"],
        "held_out_prompts": tuned["test_size"],
    }


def _installed_model() -> str:
    import spacy

    for name in SPACY_MODELS:
        if spacy.util.is_package(name):
            return name
    return SPACY_MODELS[-1]


if __name__ == "__main__":
    print(json.dumps(main()))
