"""Every kind of bad input gets a score or a clear ValueError from one validation function."""

from __future__ import annotations

import math

import numpy as np
import pytest

from planner.router import MAX_PROMPT_CHARS, HardnessRouter, validate_prompt


@pytest.fixture(scope="module")
def router(imagenet_profile, extractor) -> HardnessRouter:
    return HardnessRouter(imagenet_profile, extractor)


@pytest.mark.parametrize("bad", ["", "   ", "\n\t\r ", "\x00\x01\u200b\ufeff"])
def test_empty_prompts_are_rejected(router, bad):
    with pytest.raises(ValueError, match="empty"):
        validate_prompt(bad)
    with pytest.raises(ValueError, match="empty"):
        router.score(bad)


@pytest.mark.parametrize("bad", [None, 42, 3.5, ["a dog"], {"prompt": "a dog"}, b"a dog"])
def test_non_strings_are_rejected(router, bad):
    with pytest.raises(ValueError, match="must be a string"):
        router.score(bad)


def test_huge_prompt_scores_like_its_prefix(router):
    huge = ("a red ball next to a green box " * 4000)[:100_000]
    assert len(huge) == 100_000
    s = router.score(huge)
    assert math.isfinite(s)
    assert s == router.score(huge[:MAX_PROMPT_CHARS])


def test_control_characters_are_spaces(router):
    assert validate_prompt("a\x00dog\x07 on\ta\nsofa\u202e") == "a dog on a sofa"
    assert router.score("a\x00dog on\ta sofa") == router.score("a dog on a sofa")


@pytest.mark.parametrize(
    "prompt",
    ["a cute 🐱 cat 🎉🎉", "富士山の写真", "кошка на диване", "قطة على الأريكة", "🐱🐶🦊",
     "a dog \ud800 with a lone surrogate", "ｆｕｌｌｗｉｄｔｈ text", "é" * 5000],
)
def test_unusual_text_gets_a_finite_score(router, prompt):
    assert math.isfinite(router.score(prompt))


def test_score_many_names_the_bad_prompt(router):
    with pytest.raises(ValueError, match="prompt 1: prompt is empty"):
        router.score_many(["a dog", "   ", "a cat"])


def test_score_many_matches_single_and_cache(router, imagenet_prompts):
    sample = imagenet_prompts[:50]
    batch = router.score_many(sample)
    assert np.allclose(batch, [router.score(p) for p in sample], rtol=0, atol=1e-12)
    assert router.cached >= 50


def test_lru_cache_is_bounded(imagenet_profile, extractor, imagenet_prompts):
    small = HardnessRouter(imagenet_profile, extractor, cache_size=3)
    first = small.score(imagenet_prompts[0])
    for p in imagenet_prompts[1:10]:
        small.score(p)
    assert small.cached == 3
    small.score_many(imagenet_prompts[10:30])
    assert small.cached == 3
    assert small.score(imagenet_prompts[0]) == first  # evicted, re-parsed, same score
