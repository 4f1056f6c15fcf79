"""Prompts the English features cannot read get the profile's deliberate route."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hadis_celery.settings import DEFAULT_ROUTER_PROFILE
from planner.reference import read_prompts
from planner.router import HardnessRouter, RouterProfile
from planner.router.language import (
    NO_LETTERS,
    NON_ENGLISH,
    NON_LATIN,
    READABLE,
    unreadable_reason,
)


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("a red ball on a green field", READABLE),
        ("a cute 🐱 cat 🎉🎉", READABLE),
        ("ｆｕｌｌｗｉｄｔｈ text", READABLE),
        ("portrait by alphonse mucha and giorgio de chirico, trending on artstation", READABLE),
        ("富士山の写真", NON_LATIN),
        ("кошка на диване", NON_LATIN),
        ("قطة على الأريكة", NON_LATIN),
        ("a photo of 富士山の美しい写真", NON_LATIN),  # most letters are not Latin
        ("🐱🐶🦊", NO_LETTERS),
        ("1 2 3 !!!", NO_LETTERS),
        ("un chat noir assis sur le canapé", NON_ENGLISH),
        ("ein Hund auf dem Sofa im Garten", NON_ENGLISH),
        ("un perro en la playa con su dueño", NON_ENGLISH),
        ("een hond op de bank", NON_ENGLISH),
        ("uma casa na praia", NON_ENGLISH),
    ],
)
def test_unreadable_reasons(prompt, reason):
    assert unreadable_reason(prompt) == reason


def test_reference_english_prompts_are_readable(reference):
    """No ImageNet caption and almost no DiffusionDB prompt is routed around the features."""
    imagenet = read_prompts(reference / "prompts" / "imagenet1k_captions_5k.txt")
    assert sum(bool(unreadable_reason(p)) for p in imagenet) == 0
    ddb = [p for p in read_prompts(reference / "prompts" / "diffusiondb_first_5k.txt")
           if p.strip()]
    flagged = [p for p in ddb if unreadable_reason(p)]
    # The flagged ones are emoji-only lines and one Chinese prompt.
    assert len(flagged) <= 10
    assert all(unreadable_reason(p) in (NO_LETTERS, NON_LATIN) for p in flagged)


@pytest.fixture(scope="module")
def shipped_router(extractor) -> HardnessRouter:
    return HardnessRouter(RouterProfile.load(DEFAULT_ROUTER_PROFILE), extractor)


@pytest.mark.parametrize("prompt", ["富士山の写真", "кошка на диване", "🐱🐶🦊",
                                    "un chat noir assis sur le canapé"])
def test_unreadable_prompts_go_heavy_not_light(shipped_router, prompt):
    """Before: every token "rare", scores around -6, so these went to the light model."""
    score = shipped_router.score(prompt)
    for r in (0.05, 0.3, 0.9):  # the routing rule: strictly above θ goes heavy
        assert score > shipped_router.threshold_for(r)
    assert not score > shipped_router.threshold_for(0.0)
    assert score == shipped_router.profile.unreadable_score(prompt)


def test_unreadable_quantile_is_a_profile_setting(imagenet_profile, extractor):
    median = replace(imagenet_profile, unreadable_quantile=0.5)
    router = HardnessRouter(median, extractor)
    s = router.score("富士山の写真")
    assert abs(s - median.threshold_for(0.5)) < 1e-5
    batch = router.score_many(["a dog on a sofa", "富士山の写真", "a cat"])
    assert batch[1] == s
    assert np.allclose(batch[[0, 2]], [router.score("a dog on a sofa"), router.score("a cat")],
                       rtol=0, atol=1e-12)
