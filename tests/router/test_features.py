"""Feature values on hand-checked prompts (each count verified by reading the parse)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from planner.router import FEATURE_NAMES, FeatureExtractor


def feats(extractor, prompt: str, features: str = "refined") -> dict[str, int]:
    counts = extractor.extract(prompt, features).astype(int).tolist()
    return dict(zip(FEATURE_NAMES, counts, strict=True))


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


@pytest.mark.parametrize(
    ("prompt", "artifact", "refined"),
    [
        # Stop words are abstract in the artifact: a 1.46, is 1.59, with 2.0, a 1.46.
        ("a cat is sitting with a dog", {"abstractness": 4, "prompt_length": 7},
         {"abstractness": 0, "prompt_length": 7}),
        # the 1.43, of 1.67 (twice), and 1.52, the; essence, freedom, idea, hope below 2.5.
        ("the essence of freedom and the idea of hope", {"abstractness": 9},
         {"abstractness": 4}),
        # Punctuation is rare in the artifact (wordfreq gives "," and "." frequency 0) but
        # never part of the length.
        ("a dog, a cat.", {"token_rarity": 2, "prompt_length": 4, "abstractness": 2},
         {"token_rarity": 0, "prompt_length": 4, "abstractness": 0}),
        ("a photo, of a dog!!!", {"token_rarity": 4, "prompt_length": 5},
         {"token_rarity": 0, "prompt_length": 5}),
        # Overlapping spatial matches all count in the artifact: on, to, on top of, next to.
        ("a lamp on top of a table next to the window", {"spatial_relations": 4},
         {"spatial_relations": 2}),
        ("a cat sitting in front of a fireplace", {"spatial_relations": 2},
         {"spatial_relations": 1}),
        # The artifact matches phrases as substrings of the joined tokens: "with|in front of".
        ("within front of the house", {"spatial_relations": 2}, {"spatial_relations": 1}),
        # Shared definitions agree.
        ("a red ball sits in the grass on a green field",
         {"num_objects": 3, "attribute_density": 2, "action_verbs": 1, "spatial_relations": 2},
         {"num_objects": 3, "attribute_density": 2, "action_verbs": 1, "spatial_relations": 2}),
    ],
)
def test_artifact_definitions_on_hand_checked_prompts(extractor, prompt, artifact, refined):
    got_a = feats(extractor, prompt, "artifact")
    got_r = feats(extractor, prompt, "refined")
    assert {k: got_a[k] for k in artifact} == artifact
    assert {k: got_r[k] for k in refined} == refined


def test_one_parse_serves_both_sets(extractor, imagenet_prompts):
    sample = imagenet_prompts[:100]
    docs = extractor.parse_many(sample)
    for fs in ("artifact", "refined"):
        assert np.array_equal(extractor.extract_many(sample, features=fs),
                              np.array([extractor.features_of(d, fs) for d in docs]))
    with pytest.raises(ValueError, match="unknown feature set 'paper'"):
        extractor.extract("a dog", "paper")


def test_blas_runs_on_one_thread_while_parsing_and_is_restored(extractor, imagenet_prompts):
    """Under load, BLAS threads waiting for cores made single prompts 4x slower; the scope
    is shared by concurrent parses and must leave the process's setting as it found it."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    from planner.router.features import _BLAS

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    assert before, "numpy has no BLAS library to limit"
    with _BLAS.one():
        assert set(blas_threads()) == {1}
        with _BLAS.one():
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {1}
    assert blas_threads() == before
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(extractor.extract, imagenet_prompts[:40]))
    assert blas_threads() == before


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


def test_slim_attribute_ruler_keeps_every_pos_and_tag(extractor, imagenet_prompts, reference,
                                                     lexicon_path):
    """The ruler without its morphology and lemma rules: same POS and TAG, same counts."""
    from planner.reference import read_prompts

    full = FeatureExtractor(lexicon_path, slim_attribute_ruler=False)
    ddb = [p for p in read_prompts(reference / "prompts" / "diffusiondb_first_5k.txt")[:300]
           if p.strip()]
    sample = imagenet_prompts[2000:2300] + ddb
    assert len(extractor.nlp.get_pipe("attribute_ruler").patterns) < len(
        full.nlp.get_pipe("attribute_ruler").patterns)
    for a, b in zip(extractor.parse_many(sample), full.parse_many(sample), strict=True):
        assert [(t.pos_, t.tag_) for t in a] == [(t.pos_, t.tag_) for t in b]
    for fs in ("artifact", "refined"):
        assert np.array_equal(extractor.extract_many(sample, features=fs),
                              full.extract_many(sample, features=fs))


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
