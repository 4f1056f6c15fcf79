"""Router benchmark: single-prompt latency, batch throughput against a plain spaCy loop,
held-out gain capture of tuned, reference and random weights, and the heavy share at
router ratio 0.3 on ImageNet captions and on DiffusionDB prompts.

Run from the repo root: ``python -m bench.router``. The last line is one JSON object.
Latency figures depend on the machine's load: the JSON carries the load average, and next
to each wall-clock figure the CPU time of the scoring thread (``*_cpu_*``; the router
parses on one thread), which other processes inflate less, though not by nothing (they
share the cores' caches). It also counts the reference prompts whose features differ
from those of spaCy's own pipeline stages (the speed-ups must keep that at 0).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from hadis_celery.settings import DEFAULT_ROUTER_PROFILE
from planner.reference import read_model_scores, read_prompts, reference_path
from planner.router import FeatureExtractor, HardnessRouter, RouterProfile
from planner.router.features import SPACY_MODELS
from planner.router.prompt import validate_prompt
from planner.router.tuning import all_pairs, prompt_gains, tune_and_evaluate
from sim.workload import valid_prompts

SINGLE_N = 1000
BATCH_N = 1500
BATCH_RUNS = 3
RATIO = 0.3


def _timed(fn, *args) -> tuple[float, float]:
    """Wall-clock and this thread's CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn(*args)
    return time.perf_counter() - wall, time.thread_time() - cpu


def _percentiles(samples: Sequence[float]) -> tuple[float, float]:
    return (round(float(np.median(samples)) * 1e3, 3),
            round(float(np.percentile(samples, 99)) * 1e3, 3))


def main() -> dict:
    import spacy

    load_before = os.getloadavg()
    prompts = read_prompts(reference_path("prompts", "imagenet1k_captions_5k.txt"))
    ddb = valid_prompts(read_prompts(reference_path("prompts", "diffusiondb_first_5k.txt")))
    extractor = FeatureExtractor(reference_path("router", "concreteness.csv"))
    shipped = RouterProfile.load(DEFAULT_ROUTER_PROFILE)
    feature_set = shipped.features

    # Heavy share of the shipped profile at the router ratio: θ from its fit-set quantiles.
    # The router's cache then hands the same features to the tuning below.
    t0 = time.perf_counter()
    full = HardnessRouter(shipped, extractor, cache_size=len(prompts) + len(ddb))
    theta = shipped.threshold_for(RATIO)
    in_share = float(np.mean(full.score_many(prompts) > theta))
    ddb_share = float(np.mean(full.score_many(ddb) > theta))
    feats, ddb_feats = full.features_many(prompts), full.features_many(ddb)
    print(f"{feature_set} features of {len(prompts)} + {len(ddb)} prompts: "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

    # Single prompts, no cache hits: what the front door pays per request.
    router = HardnessRouter(shipped, extractor, cache_size=0)
    for p in prompts[:50]:
        router.score(p)
    single, single_cpu = zip(*(_timed(router.score, p)
                               for p in prompts[100 : 100 + SINGLE_N]), strict=True)
    single_ddb = [_timed(router.score, p)[0] for p in ddb[:200]]

    # Batches, against the naive loop (full pipeline, one nlp(p) per prompt), same prompts.
    batch_prompts = prompts[2000 : 2000 + BATCH_N]
    # Three runs (the median is the figure, all three are printed): one is too noisy on a
    # shared machine.
    batch_runs = [_timed(HardnessRouter(shipped, extractor, cache_size=0).score_many,
                         batch_prompts) for _ in range(BATCH_RUNS)]
    batch_s = float(np.median([wall for wall, _ in batch_runs]))
    batch_cpu_s = float(np.median([cpu for _, cpu in batch_runs]))
    nlp = spacy.load(_installed_model())
    for p in prompts[:20]:
        nlp(p)
    t = time.perf_counter()
    for p in batch_prompts:
        nlp(p)
    naive_s = time.perf_counter() - t

    # The faster stages must not change a feature: spaCy's own stages (blis products, the
    # spaCy attribute ruler, no embedding cache) on every reference prompt, same counts.
    plain = FeatureExtractor(reference_path("router", "concreteness.csv"), numpy_gemm=False,
                             indexed_attribute_rules=False, cache_embeddings=False)
    texts = [validate_prompt(p) for p in prompts] + ddb
    plain_feats = plain.extract_many(texts, features=feature_set)
    differing = int(np.sum((plain_feats != np.vstack([feats, ddb_feats])).any(axis=1)))

    # Held-out gain capture (pairs: all six of the sd35 profile), tuned as the shipped
    # profile was: the profile's features and normalisation, DiffusionDB as the shift set.
    scores = read_model_scores(reference_path("profile-sd35"), len(prompts))
    gains = prompt_gains(scores, all_pairs(scores))
    cands = np.loadtxt(reference_path("router", "feat_weight_candidates.txt"), ndmin=2)
    t = time.perf_counter()
    tuned = tune_and_evaluate(feats, prompts, gains, candidates=cands,
                              normalise=shipped.normalise, shift_feats=ddb_feats,
                              shift_texts=ddb)
    print(f"tuning: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    k = tuned["ratios"].index(RATIO)

    p50, p99 = _percentiles(single)
    cpu_p50, cpu_p99 = _percentiles(single_cpu)
    ddb_p50, ddb_p99 = _percentiles(single_ddb)
    return {
        "single_p50_ms": p50,
        "single_p99_ms": p99,
        "single_cpu_p50_ms": cpu_p50,
        "single_cpu_p99_ms": cpu_p99,
        "single_diffusiondb_p50_ms": ddb_p50,
        "single_diffusiondb_p99_ms": ddb_p99,
        "batch_prompts_per_s": round(BATCH_N / batch_s, 1),
        "batch_cpu_prompts_per_s": round(BATCH_N / batch_cpu_s, 1),
        "batch_runs_prompts_per_s": [round(BATCH_N / wall, 1) for wall, _ in batch_runs],
        "naive_prompts_per_s": round(BATCH_N / naive_s, 1),
        "batch_speedup": round(naive_s / batch_s, 2),
        "router_ratio": RATIO,
        "tuned_gain_capture": tuned["held_out"]["tuned"][k],
        "reference_weights_gain_capture": tuned["held_out"]["reference"][k],
        "random_gain_capture": tuned["held_out"]["random"][k],
        "tuned_weights": tuned["weights"],
        "tuned_diffusiondb_heavy_share_held_out": tuned["shift"]["held_out_heavy_share"][k],
        "held_out_prompts": tuned["test_size"],
        "shipped_features": feature_set,
        "shipped_normalise": shipped.normalise,
        "imagenet_heavy_share": round(in_share, 4),
        "diffusiondb_heavy_share": round(ddb_share, 4),
        "features_checked_against_plain_spacy": len(texts),
        "features_differing_from_plain_spacy": differing,
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }


def _installed_model() -> str:
    import spacy

    for name in SPACY_MODELS:
        if spacy.util.is_package(name):
            return name
    return SPACY_MODELS[-1]


if __name__ == "__main__":
    print(json.dumps(main()))
