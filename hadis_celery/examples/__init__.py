"""Packaged example deployments (``*.toml``); the only place a model set is named.

``sd35-replay`` is the deployment when ``HADIS_DEPLOYMENT`` is unset; ``sdxl-lightning-sd35``
documents a real-weights setup with the settings of the models' cards.
"""

from __future__ import annotations

from dataclasses import replace

from planner.registry import Registry

SD35_REPLAY = "sd35-replay"


def sd35_registry(backend: str = "replay") -> Registry:
    """The four models of the reference profile, as the packaged ``sd35-replay`` declares
    them (latency: one L40S, 1024x1024, batch 1, the affine batch curve)."""
    from hadis_celery.deployment import load

    reg = load(SD35_REPLAY).registry
    return Registry(tuple(replace(m, backend=backend) for m in reg))
