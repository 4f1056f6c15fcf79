"""Gain capture and weight tuning on the recorded discriminator scores."""

from __future__ import annotations

import numpy as np
import pytest

from planner.reference import read_model_scores, read_prompts
from planner.router.tuning import (
    all_pairs,
    capture_table,
    heavy_shares,
    prompt_gains,
    random_capture,
    shift_shortfall,
    tune_and_evaluate,
    tune_weights,
)


def test_capture_bounds_on_synthetic_gains():
    rng = np.random.default_rng(1)
    gains = rng.normal(1.0, 2.0, size=(2, 1000))
    oracle = capture_table(gains.mean(axis=0), gains)  # ranks by the mean gain
    perfect = capture_table(gains[0], gains[:1])[0]
    assert np.allclose(perfect, 1.0)
    assert np.all(capture_table(-gains[0], gains[:1])[0] < random_capture(gains[:1]))
    perms = np.stack([rng.permutation(1000) for _ in range(400)], axis=1).astype(float)
    rand = capture_table(perms, gains).mean(axis=0)
    assert np.allclose(rand, random_capture(gains), atol=0.02)
    assert np.all(oracle[0] > rand)


def test_gains_are_heavy_minus_light_log_odds():
    scores = {0: np.array([0.5, 0.1]), 3: np.array([0.5, 0.5])}
    g = prompt_gains(scores, [(0, 3)])
    assert g.shape == (1, 2)
    assert g[0, 0] == pytest.approx(0.0)
    assert g[0, 1] == pytest.approx(np.log(9.0))
    with pytest.raises(ValueError, match="no scores"):
        prompt_gains(scores, [(0, 2)])


def test_tuned_weights_beat_reference_and_random_held_out(reference, imagenet_features,
                                                          imagenet_prompts):
    scores = read_model_scores(reference / "profile-sd35", len(imagenet_prompts))
    gains = prompt_gains(scores, all_pairs(scores))
    result = tune_and_evaluate(imagenet_features, imagenet_prompts, gains, n_random=600,
                               rounds=3, per_round=300)
    held = result["held_out"]
    k = result["ratios"].index(0.3)
    assert held["tuned"][k] > held["reference"][k]
    assert held["tuned"][k] > held["random"][k]
    assert np.mean(held["tuned"]) > np.mean(held["reference"])
    assert result["train_size"] + result["test_size"] == len(imagenet_prompts)


def test_heavy_shares_and_shortfall():
    fit = np.arange(100.0)  # θ at r: the (1 - r) quantile
    other = np.array([95.0, 85.0, 75.0, 10.0])
    shares = heavy_shares(fit, other, (0.1, 0.3))
    assert shares[:, 0].tolist() == [0.25, 0.75]
    assert shift_shortfall(fit, other, (0.1, 0.3))[0] == 0.0
    assert shift_shortfall(fit, other - 50, (0.1, 0.3))[0] == pytest.approx(0.3)


def test_shift_constraint_holds_where_unconstrained_weights_fail():
    """Synthetic: the gain falls with length on the fit set, and long prompts exist only in
    the shift set; unconstrained weights rank them easiest, constrained ones may not."""
    rng = np.random.default_rng(3)
    n = 2000
    z = rng.normal(size=(n, 2))  # columns: length, verbs
    gains = (z[:, 1] - 0.8 * z[:, 0] + rng.normal(scale=0.5, size=n))[None, :]
    shift = np.column_stack([rng.normal(4.0, 0.5, size=800), rng.normal(size=800)])
    free = tune_weights(z, gains, n_random=300, rounds=2, per_round=100)
    bound = tune_weights(z, gains, n_random=300, rounds=2, per_round=100, shift=shift)
    w_free, w_bound = np.asarray(free.weights)[:, None], np.asarray(bound.weights)[:, None]
    assert shift_shortfall(z @ w_free, shift @ w_free)[0] > 0.05
    assert bound.shift_shortfall == 0.0
    assert shift_shortfall(z @ w_bound, shift @ w_bound)[0] == 0.0
    assert capture_table(z @ w_bound[:, 0], gains).mean() > random_capture(gains).mean()


def test_tuning_with_a_shift_set_reports_held_out_shares(reference, extractor, imagenet_prompts,
                                                         imagenet_features):
    ddb = [p for p in read_prompts(reference / "prompts" / "diffusiondb_first_5k.txt")[:600]
           if p.strip()]
    ddb_feats = extractor.extract_many(ddb)
    scores = read_model_scores(reference / "profile-sd35", len(imagenet_prompts))
    gains = prompt_gains(scores, all_pairs(scores))
    result = tune_and_evaluate(imagenet_features, imagenet_prompts, gains, n_random=300,
                               rounds=2, per_round=100, shift_feats=ddb_feats, shift_texts=ddb)
    shift = result["shift"]
    assert shift["shortfall"] == 0.0
    assert shift["train_size"] + shift["test_size"] == len(ddb)
    k = result["ratios"].index(0.3)
    assert shift["held_out_heavy_share"][k] >= 0.3 - 0.05
    assert result["held_out"]["tuned"][k] > result["held_out"]["random"][k]
