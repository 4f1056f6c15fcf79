"""Thresholds from routing fractions, and the profile artifact's round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hadis_celery.settings import DEFAULT_ROUTER_PROFILE
from planner.reference import read_prompts
from planner.router import HardnessRouter, RouterProfile
from planner.router.profile import RouterProfileError, fit_profile, tie_break


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
    assert router.score(hard) > theta >= router.score(easy)  # hard goes heavy, easy light


def test_version_1_files_still_load_as_they_were_fitted(tmp_path, imagenet_features,
                                                        imagenet_prompts, extractor):
    """Profiles written before feature sets: refined counts, z-scores, same scores."""
    legacy = fit_profile(imagenet_features, imagenet_prompts, feature_set="refined",
                         normalise="zscore")
    body = {k: v for k, v in legacy.to_dict().items()
            if k in ("mean", "std", "weights", "quantiles", "feature_names", "fit_size",
                     "lexicon", "source", "created")}
    body["version"] = 1
    p = tmp_path / "v1.json"
    p.write_text(json.dumps(body))
    loaded = RouterProfile.load(p)
    assert (loaded.features, loaded.normalise, loaded.version) == ("refined", "zscore", 2)
    sample = imagenet_prompts[:50]
    assert np.array_equal(HardnessRouter(loaded, extractor).score_many(sample),
                          HardnessRouter(legacy, extractor).score_many(sample))


def test_quantile_scores_are_bounded_out_of_distribution(imagenet_profile, imagenet_features):
    """z-scores put long prompts at -56; quantile-normalised ones stay within the weights."""
    assert imagenet_profile.normalise == "quantile"
    w = np.asarray(imagenet_profile.weights)
    lo, hi = w[w < 0].sum(), w[w > 0].sum()
    wild = np.vstack([imagenet_features * 50, imagenet_features * 0 - 5, imagenet_features])
    s = imagenet_profile.raw_scores(wild)
    assert np.all(s >= lo - 1e-9) and np.all(s <= hi + 1e-9)
    z = imagenet_profile.normalised(imagenet_features)
    assert np.all((z > 0) & (z < 1))
    one = imagenet_profile.raw_scores(imagenet_features[7])
    assert np.ndim(one) == 0 and one == pytest.approx(s[-len(imagenet_features) + 7])


@pytest.mark.parametrize(("key", "value", "message"), [
    ("features", "paper", "unknown feature set 'paper'"),
    ("normalise", "minmax", "unknown normalisation 'minmax'"),
    ("unreadable_quantile", 1.5, "unreadable_quantile must be in"),
    ("knots", [[0.0]] * 8, "knots and levels must be non-empty, same length"),
    ("version", 3, "unsupported router profile version 3"),
])
def test_bad_new_fields_say_what_is_wrong(tmp_path, imagenet_profile, key, value, message):
    data = imagenet_profile.to_dict()
    data[key] = value
    p = tmp_path / "p.json"
    p.write_text(json.dumps(data))
    with pytest.raises(RouterProfileError, match=message):
        RouterProfile.load(p)


def test_shipped_profile_sends_long_user_prompts_heavy_at_least_as_often(reference, extractor):
    """Issue 19: at router ratio 0.3 the old profile sent 3.6% of DiffusionDB prompts heavy
    against 29.6% of ImageNet captions (long prompts scored easiest)."""
    profile = RouterProfile.load(DEFAULT_ROUTER_PROFILE)
    assert (profile.features, profile.normalise) == ("artifact", "quantile")
    router = HardnessRouter(profile, extractor)
    theta = router.threshold_for(0.3)
    imagenet = read_prompts(reference / "prompts" / "imagenet1k_captions_5k.txt")[::10]
    ddb = [p for p in read_prompts(reference / "prompts" / "diffusiondb_first_5k.txt")[::10]
           if p.strip()]
    in_share = float(np.mean(router.score_many(imagenet) > theta))
    ddb_share = float(np.mean(router.score_many(ddb) > theta))
    assert abs(in_share - 0.3) < 0.05
    assert ddb_share >= in_share, (ddb_share, in_share)
