"""Prompt hardness router: spaCy features, a fitted profile, and threshold lookup."""

from hadis_celery.router.features import FEATURE_NAMES, FEATURE_SETS, FeatureExtractor
from hadis_celery.router.language import unreadable_reason
from hadis_celery.router.profile import RouterProfile
from hadis_celery.router.prompt import MAX_PROMPT_CHARS, MAX_TOKENS, validate_prompt
from hadis_celery.router.router import HardnessRouter

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
