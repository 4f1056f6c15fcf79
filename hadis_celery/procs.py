"""Stopping a process group we started: the one rule ``hadis up``, the benches and the tests
share (a signal to the whole group, SIGKILL for what is left after the grace period)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0,
               sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to ``proc``'s process group (started with ``start_new_session``), wait
    up to ``grace_s``, then SIGKILL the group and reap ``proc``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
