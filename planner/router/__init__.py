"""Prompt hardness router: spaCy features, a fitted profile, and threshold lookup."""

from planner.router.features import FEATURE_NAMES, FEATURE_SETS, FeatureExtractor
from planner.router.language import unreadable_reason
from planner.router.profile import RouterProfile
from planner.router.prompt import MAX_PROMPT_CHARS, MAX_TOKENS, validate_prompt
from planner.router.router import HardnessRouter

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_SETS",
    "MAX_PROMPT_CHARS",
    "MAX_TOKENS",
    "FeatureExtractor",
    "HardnessRouter",
    "RouterProfile",
    "unreadable_reason",
    "validate_prompt",
]
