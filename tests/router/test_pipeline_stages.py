"""The router's faster pipeline stages give spaCy's annotations: the indexed attribute
rules, the cached token embeddings and the transposed-weight matrix products."""

from __future__ import annotations

import numpy as np
import pytest
import spacy
from spacy.tokens import Doc

from planner.reference import read_prompts
from planner.router import FeatureExtractor
from planner.router.attribute_rules import AttributeRules, compile_rules
from planner.router.embed_cache import CachedTok2Vec


def annotations(doc) -> tuple:
    """Everything the features read, token by token, and the entities."""
    return (tuple((t.tag_, t.pos_, t.dep_, t.head.i) for t in doc),
            tuple((e.start, e.end, e.label_) for e in doc.ents))


@pytest.fixture(scope="module")
def plain(lexicon_path) -> FeatureExtractor:
    """spaCy's own stages (blis products, the spaCy ruler, no embedding cache)."""
    return FeatureExtractor(lexicon_path, numpy_gemm=False, indexed_attribute_rules=False,
                            cache_embeddings=False)


@pytest.fixture(scope="module")
def sample(imagenet_prompts, reference) -> list[str]:
    ddb = [p for p in read_prompts(reference / "prompts" / "diffusiondb_first_5k.txt")[:250]
           if p.strip()]
    return imagenet_prompts[3000:3250] + ddb + ["a dog", "Barack Obama in Paris", "cat",
                                                "a  b", "there is a cat on the mat"]


def test_fast_stages_are_in_use(extractor):
    stages = dict(extractor._stages)
    assert isinstance(stages["attribute_ruler"], AttributeRules)
    assert isinstance(stages["tok2vec"], CachedTok2Vec)


def test_fast_stages_annotate_as_spacy(extractor, plain, sample):
    """Reference prompts, batch and single path: same tags, POS, arcs, entities, features."""
    fast_docs, plain_docs = extractor.parse_many(sample), plain.parse_many(sample)
    for fast, ref in zip(fast_docs, plain_docs, strict=True):
        assert annotations(fast) == annotations(ref), ref.text
    for text in sample[::10]:
        assert annotations(extractor.parse(text)) == annotations(plain.parse(text)), text
    for fs in ("artifact", "refined"):
        assert np.array_equal(extractor.extract_many(sample, features=fs),
                              plain.extract_many(sample, features=fs))


# -- attribute rules -----------------------------------------------------------------------
RULES = [
    {"patterns": [[{"TAG": "NN"}]], "attrs": {"POS": "NOUN"}},
    {"patterns": [[{"TAG": "VBZ"}]], "attrs": {"POS": "VERB"}},
    {"patterns": [[{"TAG": "DT"}]], "attrs": {"POS": "DET"}},
    # a later rule wins over the tag rule for the same token
    {"patterns": [[{"TAG": "NN", "LOWER": {"IN": ["something", "nothing"]}}]],
     "attrs": {"POS": "PRON"}},
    {"patterns": [[{"TAG": {"NOT_IN": ["TO", ""]}, "DEP": {"IN": ["aux"]}}]],
     "attrs": {"POS": "AUX"}},
    # two tokens, the second one set
    {"patterns": [[{"DEP": "expl"}, {"LOWER": {"IN": ["is", "are"]}}]],
     "attrs": {"POS": "VERB"}, "index": 1},
    # sets TAG: a rule testing the new TAG must not see it (tests read the old values)
    {"patterns": [[{"LOWER": "mat"}]], "attrs": {"TAG": "XX", "POS": "X"}},
    {"patterns": [[{"TAG": "XX"}]], "attrs": {"POS": "SYM"}},
    {"patterns": [[{"IS_SPACE": True}]], "attrs": {"TAG": "_SP", "POS": "SPACE"}},
]


def hand_doc(vocab) -> Doc:
    words = ["there", "is", "something", "on", "the", "mat", "  ", "it", "has", "Nothing"]
    tags = ["EX", "VBZ", "NN", "IN", "DT", "NN", "NN", "PRP", "VBZ", "NN"]
    deps = ["expl", "ROOT", "attr", "prep", "det", "pobj", "dep", "nsubj", "aux", "dobj"]
    heads = [1, 1, 1, 2, 5, 3, 5, 8, 8, 8]
    return Doc(vocab, words=words, spaces=[True] * 5 + [False] * 5, tags=tags, deps=deps,
               heads=heads)


def test_attribute_rules_follow_spacy_semantics():
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    ruler.add_patterns(RULES)
    rules = compile_rules(ruler.patterns)
    assert rules is not None
    expected = ruler(hand_doc(nlp.vocab))
    got = rules(hand_doc(nlp.vocab))
    assert [(t.tag_, t.pos_) for t in got] == [(t.tag_, t.pos_) for t in expected]
    assert [t.pos_ for t in got] == ["", "VERB", "PRON", "", "DET", "X", "SPACE", "", "AUX",
                                     "PRON"]
    assert got[5].tag_ == "XX" and got[6].tag_ == "_SP"


@pytest.mark.parametrize("rule", [
    {"patterns": [[{"TAG": "NN", "OP": "+"}]], "attrs": {"POS": "NOUN"}},
    {"patterns": [[{"LENGTH": 3}]], "attrs": {"POS": "NOUN"}},
    {"patterns": [[{"TAG": {"REGEX": "^N"}}]], "attrs": {"POS": "NOUN"}},
    {"patterns": [[{"TAG": "NN"}]], "attrs": {"LEMMA": "thing"}},
    {"patterns": [[{"TAG": "NN"}]], "attrs": {"POS": "NOUN"}, "index": 3},
    {"patterns": [[{"TAG": "NN"}]], "attrs": {"POS": "NOT-A-POS"}},
    {"patterns": [[{"TAG": {"IN": ["NN"], "NOT_IN": ["NNS"]}}]], "attrs": {"POS": "NOUN"}},
])
def test_attribute_rules_refuse_what_they_cannot_read(rule):
    assert compile_rules([rule]) is None


# -- embedding cache -----------------------------------------------------------------------
def test_embedding_cache_rows_do_not_depend_on_history(extractor, imagenet_prompts):
    """A cache that starts over every few rows gives the tensors of one that never does.

    Equal to float32 rounding, not bit for bit: the encoder's matrix products run on
    batches of other shapes here (2 against 7 documents), and BLAS may sum them in another
    order (measured: up to 1.5e-6 on values of order 1). A row from a wrong cache slot
    differs by about 0.2 (median, measured), far outside the tolerance."""
    small = CachedTok2Vec.wrap(extractor.nlp.get_pipe("tok2vec"), max_rows=50)
    big = CachedTok2Vec.wrap(extractor.nlp.get_pipe("tok2vec"))
    texts = imagenet_prompts[4000:4060]
    docs_small = list(small.pipe((extractor.nlp.make_doc(t) for t in texts), batch_size=2))
    docs_big = list(big.pipe((extractor.nlp.make_doc(t) for t in reversed(texts)),
                             batch_size=7))[::-1]
    assert 0 < small.cached_rows <= 50 < big.cached_rows
    for a, b in zip(docs_small, docs_big, strict=True):
        assert a.tensor.shape == b.tensor.shape
        np.testing.assert_allclose(a.tensor, b.tensor, rtol=1e-4, atol=1e-4)


def test_embedding_cache_wraps_only_the_known_chain(extractor):
    assert CachedTok2Vec.wrap(extractor.nlp.get_pipe("tagger")) is None
    assert CachedTok2Vec.wrap(object()) is None


def test_transposed_weight_products_match_plain_ones(extractor):
    """The copies of W.T are used and give numpy's products with the transposed view, up to
    float32 rounding (OpenBLAS may sum in another order for a few rows; the annotations
    test above shows no tag or arc changes)."""
    ops = extractor.nlp.get_pipe("tok2vec").model.ops
    rng = np.random.default_rng(0)
    used = 0
    for param in ops._params.values():
        if param.ndim != 2:
            continue
        x = rng.standard_normal((40, param.shape[1]), dtype=np.float32)
        np.testing.assert_allclose(ops.gemm(x, param, trans2=True), np.matmul(x, param.T),
                                   rtol=1e-5, atol=1e-5)
        used += 1
    assert used and ops._transposed


def test_concurrent_parses_share_the_caches_safely(extractor, lexicon_path, imagenet_prompts):
    """Front-door threads parse at once: with a cache small enough to start over many times
    under them, every prompt still gets the features of a parse on its own."""
    from concurrent.futures import ThreadPoolExecutor

    fx = FeatureExtractor(lexicon_path)
    fx._tok2vec.max_rows = 64
    texts = imagenet_prompts[4100:4260]
    alone = np.array([extractor.extract(t) for t in texts])
    with ThreadPoolExecutor(4) as pool:
        together = np.array(list(pool.map(fx.extract, texts)))
    assert np.array_equal(together, alone)
    assert 0 < fx._tok2vec.cached_rows <= 64
