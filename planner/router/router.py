"""``HardnessRouter``: the front door's and the simulator's one prompt scorer."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from planner.router.features import FEATURE_NAMES, FeatureExtractor
from planner.router.language import unreadable_reason
from planner.router.profile import RouterProfile, tie_break
from planner.router.prompt import validate_prompt


class HardnessRouter:
    """Scores prompts (higher = harder) and routes those above θ to the heavy model.

    Features are counted with the profile's feature set. Prompts the English features
    cannot read (``language.unreadable_reason``) are not parsed for their score: they get
    the profile's ``unreadable_score``. Features of recently seen prompts are kept in a
    bounded LRU cache keyed by the validated text, so a retried or popular prompt is
    parsed once.
    """

    def __init__(
        self, profile: RouterProfile, extractor: FeatureExtractor, cache_size: int = 4096
    ) -> None:
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.profile = profile
        self.extractor = extractor
        self.cache_size = cache_size

    @property
    def profile(self) -> RouterProfile:
        return self._profile

    @profile.setter
    def profile(self, profile: RouterProfile) -> None:
        """A new profile; cached features are dropped when its feature set differs."""
        with self._lock:
            if getattr(self, "_profile", None) is None or self._profile.features != (
                    profile.features):
                self._cache.clear()
            self._profile = profile

    @classmethod
    def from_paths(
        cls,
        profile_path: str | os.PathLike[str],
        lexicon_path: str | os.PathLike[str] | None = None,
        cache_size: int = 4096,
    ) -> HardnessRouter:
        return cls(RouterProfile.load(profile_path), FeatureExtractor(lexicon_path), cache_size)

    @property
    def cached(self) -> int:
        """Number of prompts whose features are in the LRU cache."""
        return len(self._cache)

    # -- features ------------------------------------------------------------------------
    def _cached(self, text: str) -> np.ndarray | None:
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
            return hit

    def _remember(self, text: str, feats: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        with self._lock:
            self._cache[text] = feats
            self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _features_text(self, text: str) -> np.ndarray:
        feats = self._cached(text)
        if feats is None:
            feats = self.extractor.extract(text, self._profile.features)
            self._remember(text, feats)
        return feats

    def features(self, prompt: object) -> dict[str, float]:
        feats = self._features_text(validate_prompt(prompt))
        return dict(zip(FEATURE_NAMES, (float(v) for v in feats), strict=True))

    @staticmethod
    def _validate_all(prompts: Sequence[object]) -> list[str]:
        texts = []
        for i, p in enumerate(prompts):
            try:
                texts.append(validate_prompt(p))
            except ValueError as exc:
                raise ValueError(f"prompt {i}: {exc}") from exc
        return texts

    def features_many(self, prompts: Sequence[object], batch_size: int = 256) -> np.ndarray:
        """Feature rows for many prompts; ``ValueError`` names the first bad one by index."""
        return self._features_texts(self._validate_all(prompts), batch_size)

    def _features_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = np.zeros((len(texts), len(FEATURE_NAMES)))
        missing: list[int] = []
        for i, t in enumerate(texts):
            hit = self._cached(t)
            if hit is None:
                missing.append(i)
            else:
                out[i] = hit
        if missing:
            fresh = self.extractor.extract_many([texts[i] for i in missing], batch_size,
                                                self._profile.features)
            out[missing] = fresh
            for i, row in zip(missing[-self.cache_size :], fresh[-self.cache_size :], strict=True):
                self._remember(texts[i], row)
        return out

    # -- scores --------------------------------------------------------------------------
    def score(self, prompt: object) -> float:
        """Hardness of one prompt (``ValueError`` for bad input)."""
        text = validate_prompt(prompt)
        profile = self._profile
        if unreadable_reason(text):
            return profile.unreadable_score(text)
        return profile.score(self._features_text(text), text)

    def score_many(self, prompts: Sequence[object], batch_size: int = 256) -> np.ndarray:
        """Scores of many prompts, each pipeline stage batched over the readable ones."""
        texts = self._validate_all(prompts)
        profile = self._profile
        unreadable = [i for i, t in enumerate(texts) if unreadable_reason(t)]
        out = np.empty(len(texts))
        if unreadable:
            out[unreadable] = [profile.unreadable_score(texts[i]) for i in unreadable]
        readable = sorted(set(range(len(texts))) - set(unreadable))
        if readable:
            rtexts = [texts[i] for i in readable]
            feats = self._features_texts(rtexts, batch_size)
            out[readable] = profile.raw_scores(feats) + np.array([tie_break(t) for t in rtexts])
        return out

    def threshold_for(self, router_ratio: float) -> float:
        return self.profile.threshold_for(router_ratio)
