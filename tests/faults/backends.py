"""A faulty backend for the fault tests, loaded by the workers through
``HADIS_BACKEND=tests.faults.backends:HangingBackend`` (no fault-injection code in the workers).
"""

from __future__ import annotations

import time

from workers.backends import Generation
from workers.backends.replay import ReplayBackend

SOFT = "hang soft"  # a stuck model call the worker's per-batch time limit interrupts
HARD = "hang hard"  # a call that ignores every interruption: only a kill ends it


class HangingBackend(ReplayBackend):
    """The replay backend, except for batches with a prompt containing ``hang soft`` (sleeps
    an hour) or ``hang hard`` (sleeps an hour, swallowing every exception raised into it)."""

    name = "hanging"

    def _generate(self, prompts: list[str], seeds: list[int]) -> Generation:
        if any(HARD in p for p in prompts):
            end = time.monotonic() + 3600
            while time.monotonic() < end:
                try:
                    time.sleep(3600)
                except BaseException:  # noqa: S110 - the point: it cannot be interrupted
                    pass
        if any(SOFT in p for p in prompts):
            time.sleep(3600)
        return super()._generate(prompts, seeds)
