"""Gain capture and weight tuning on the recorded discriminator scores."""

from __future__ import annotations

import numpy as np
import pytest

from hadis_celery.reference import read_model_scores
from hadis_celery.router.tuning import (
    all_pairs,
    capture_table,
    prompt_gains,
    random_capture,
    tune_and_evaluate,
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
                               rounds=3)
    held = result["held_out"]
    k = result["ratios"].index(0.3)
    assert held["tuned"][k] > held["reference"][k]
    assert held["tuned"][k] > held["random"][k]
    assert np.mean(held["tuned"]) > np.mean(held["reference"])
    assert result["train_size"] + result["test_size"] == len(imagenet_prompts)
