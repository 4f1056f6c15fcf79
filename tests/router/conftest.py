from __future__ import annotations

import numpy as np
import pytest

from planner.reference import read_prompts
from planner.router import FeatureExtractor
from planner.router.profile import fit_profile


@pytest.fixture(scope="session")
def extractor(lexicon_path) -> FeatureExtractor:
    return FeatureExtractor(lexicon_path)


@pytest.fixture(scope="session")
def imagenet_prompts(reference) -> list[str]:
    return read_prompts(reference / "prompts" / "imagenet1k_captions_5k.txt")


@pytest.fixture(scope="session")
def imagenet_features(extractor, imagenet_prompts) -> np.ndarray:
    return extractor.extract_many(imagenet_prompts)


@pytest.fixture(scope="session")
def imagenet_profile(imagenet_features, imagenet_prompts):
    return fit_profile(imagenet_features, imagenet_prompts)
