"""Thresholds from routing fractions, and the profile artifact's round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hadis_celery.router import HardnessRouter, RouterProfile
from hadis_celery.router.profile import RouterProfileError, tie_break
from hadis_celery.settings import DEFAULT_ROUTER_PROFILE


def fit_scores(profile, feats, prompts) -> np.ndarray:
    return profile.raw_scores(feats) + np.array([tie_break(p) for p in prompts])


def test_threshold_monotone_and_realised_fraction(imagenet_profile, imagenet_features,
                                                  imagenet_prompts):
    scores = fit_scores(imagenet_profile, imagenet_features, imagenet_prompts)
    ratios = np.round(np.arange(0.0, 1.0001, 0.05), 2)
    thetas = [imagenet_profile.threshold_for(r) for r in ratios]
    assert thetas[0] == math.inf and thetas[-1] == -math.inf
    assert all(a > b for a, b in zip(thetas, thetas[1:], strict=False))
    realised = [float(np.mean(scores > t)) for t in thetas]
    assert all(a <= b for a, b in zip(realised, realised[1:], strict=False))
    for r, got in zip(ratios, realised, strict=True):
        assert abs(got - r) <= 0.01, (r, got)
    for r in (0.1, 0.3, 0.5, 0.9):
        assert abs(imagenet_profile.heavy_fraction(imagenet_profile.threshold_for(r)) - r) < 1e-3


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), "x", None])
def test_threshold_rejects_bad_ratios(imagenet_profile, bad):
    with pytest.raises(ValueError, match="router ratio"):
        imagenet_profile.threshold_for(bad)


def test_save_load_round_trip(tmp_path, imagenet_profile, extractor, imagenet_prompts):
    path = tmp_path / "router.json"
    imagenet_profile.save(path)
    loaded = RouterProfile.load(path)
    assert loaded == imagenet_profile
    a = HardnessRouter(imagenet_profile, extractor).score_many(imagenet_prompts[:100])
    b = HardnessRouter(loaded, extractor).score_many(imagenet_prompts[:100])
    assert np.array_equal(a, b)
    assert loaded.threshold_for(0.3) == imagenet_profile.threshold_for(0.3)


def test_bad_profile_files_say_what_is_wrong(tmp_path, imagenet_profile):
    p = tmp_path / "p.json"
    p.write_text("{not json")
    with pytest.raises(RouterProfileError, match="not JSON"):
        RouterProfile.load(p)
    with pytest.raises(RouterProfileError, match="not found"):
        RouterProfile.load(tmp_path / "missing.json")
    data = imagenet_profile.to_dict()
    data["weights"] = data["weights"][:5]
    p.write_text(json.dumps(data))
    with pytest.raises(RouterProfileError, match="weights has 5 values"):
        RouterProfile.load(p)
    data = imagenet_profile.to_dict()
    data["std"] = [0.0] * 8
    p.write_text(json.dumps(data))
    with pytest.raises(RouterProfileError, match="std must be positive"):
        RouterProfile.load(p)


def test_shipped_profile_loads_and_routes(extractor):
    profile = RouterProfile.load(DEFAULT_ROUTER_PROFILE)
    router = HardnessRouter(profile, extractor)
    theta = router.threshold_for(0.3)
    hard = "a man running and jumping next to a horse galloping on top of a hill"
    easy = "Barack Obama"
    assert router.score(hard) > router.score(easy)
    assert HardnessRouter.goes_heavy(router.score(hard), theta) != HardnessRouter.goes_heavy(
        router.score(easy), theta)
