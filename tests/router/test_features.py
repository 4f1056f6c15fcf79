"""Feature values on hand-checked prompts (each count verified by reading the parse)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hadis_celery.router import FEATURE_NAMES, FeatureExtractor


def feats(extractor, prompt: str) -> dict[str, int]:
    return dict(zip(FEATURE_NAMES, extractor.extract(prompt).astype(int).tolist(), strict=True))


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        # 11 words; objects ball (nsubj), grass, field (pobj); red, green; in, on; sits
        ("a red ball sits in the grass on a green field",
         {"prompt_length": 11, "num_objects": 3, "attribute_density": 2,
          "spatial_relations": 2, "action_verbs": 1, "named_entities": 0, "abstractness": 0}),
        # "in front of" is one spatial relation, not "in" plus another
        ("a cat sitting in front of a fireplace",
         {"prompt_length": 8, "spatial_relations": 1, "action_verbs": 1}),
        # "on top of" and "next to" (not also "to"): two relations
        ("a lamp on top of a table next to the window",
         {"prompt_length": 11, "spatial_relations": 2, "action_verbs": 0}),
        # PERSON, PERSON, GPE
        ("Barack Obama shaking hands with Angela Merkel in Berlin",
         {"named_entities": 3, "action_verbs": 1, "spatial_relations": 2}),
        # PERSON, ORG
        ("a portrait of Elon Musk at the Google headquarters",
         {"named_entities": 2, "spatial_relations": 1}),
        # essence, freedom, idea, hope are all rated below 2.5
        ("the essence of freedom and the idea of hope",
         {"abstractness": 4, "named_entities": 0, "action_verbs": 0}),
        # "is" is an auxiliary, not an action verb
        ("a man is running and jumping over a fence",
         {"action_verbs": 2, "spatial_relations": 1, "num_objects": 2}),
        # both animals are rarer than 1e-5 in English text
        ("an axolotl beside a quokka", {"token_rarity": 2, "spatial_relations": 1}),
        # acomp counts as an attribute
        ("the car is red", {"attribute_density": 1, "action_verbs": 0, "prompt_length": 4}),
        ("a tall, thin, elegant woman wearing a beautiful long red dress",
         {"attribute_density": 6, "prompt_length": 11}),
        # punctuation is not length
        ("a photo, of a dog!!!", {"prompt_length": 5, "num_objects": 1}),
        ("a dog", {"prompt_length": 2, "num_objects": 0, "token_rarity": 0}),
    ],
)
def test_hand_checked_features(extractor, prompt, expected):
    got = feats(extractor, prompt)
    assert {k: got[k] for k in expected} == expected


def test_batch_equals_single(extractor, imagenet_prompts):
    sample = imagenet_prompts[:200] + ["Barack Obama in Paris", "a dog next to a cat"]
    batch = extractor.extract_many(sample)
    single = np.array([extractor.extract(p) for p in sample])
    assert np.array_equal(batch, single)


def test_blis_and_numpy_gemm_agree(extractor, imagenet_prompts, lexicon_path):
    """The numpy matrix-product speed-up must not change any annotation."""
    plain = FeatureExtractor(lexicon_path, numpy_gemm=False)
    sample = imagenet_prompts[1000:1300]
    assert np.array_equal(plain.extract_many(sample), extractor.extract_many(sample))


def test_long_prompt_is_truncated_to_token_limit(extractor):
    many = " ".join(["a red ball next to a green box"] * 50)  # 400 tokens
    f = extractor.extract(many)
    assert f[0] == extractor.max_tokens  # no punctuation: every kept token counts
    assert extractor.parse(many).__len__() == extractor.max_tokens


def test_fallback_lexicon_logs_once_and_still_counts(caplog):
    FeatureExtractor._warned_fallback = False
    with caplog.at_level(logging.WARNING):
        fx = FeatureExtractor(None)
        FeatureExtractor(None)
    warnings = [r for r in caplog.records if "concreteness lexicon" in r.getMessage()]
    assert len(warnings) == 1
    assert fx.lexicon_source == "builtin-fallback"
    got = feats(fx, "the essence of freedom and the idea of happiness")
    assert got["abstractness"] == 4
    assert feats(fx, "a red ball on a table")["abstractness"] == 0
