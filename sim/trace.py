"""Arrival traces: the reference ``arrival_ms,prompt_index`` files and synthetic shapes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TraceError(ValueError):
    """A trace file is missing or malformed (message: ``file:line: what``)."""


@dataclass(frozen=True)
class Trace:
    arrival_s: np.ndarray  # sorted arrival times in seconds from the start
    prompt_index: np.ndarray  # index into the prompt set
    name: str = "trace"
    prompt_set: np.ndarray | None = None  # per arrival: which prompt set (0 = default)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def scaled(self, time_scale: float) -> Trace:
        """The same arrivals with times multiplied by ``time_scale``."""
        return Trace(self.arrival_s * time_scale, self.prompt_index, self.name, self.prompt_set)


def read_trace(path: str | os.PathLike[str], n_prompts: int | None = None) -> Trace:
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{p}: no such trace file")
    times: list[float] = []
    idx: list[int] = []
    with p.open() as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(",")
            if len(parts) != 2:
                raise TraceError(f"{p}:{lineno}: expected arrival_ms,prompt_index")
            try:
                t, i = float(parts[0]), int(parts[1])
            except ValueError:
                raise TraceError(f"{p}:{lineno}: not numbers: {line!r}") from None
            if not np.isfinite(t) or t < 0 or i < 0:
                raise TraceError(f"{p}:{lineno}: negative or non-finite value: {line!r}")
            if n_prompts is not None and i >= n_prompts:
                raise TraceError(f"{p}:{lineno}: prompt index {i} >= {n_prompts} prompts")
            times.append(t / 1000.0)
            idx.append(i)
    order = np.argsort(np.asarray(times), kind="stable")
    return Trace(np.asarray(times)[order], np.asarray(idx, dtype=int)[order], p.stem)


def poisson_trace(rates: Sequence[tuple[float, float]], n_prompts: int, seed: int = 0,
                  name: str = "poisson") -> Trace:
    """Piecewise-constant Poisson arrivals: ``rates`` is ``[(duration_s, qps), ...]``."""
    rng = np.random.default_rng(seed)
    times: list[np.ndarray] = []
    start = 0.0
    for duration, qps in rates:
        if duration < 0 or qps < 0:
            raise ValueError("durations and rates must be non-negative")
        n = rng.poisson(qps * duration)
        times.append(np.sort(start + rng.uniform(0.0, duration, n)))
        start += duration
    t = np.concatenate(times) if times else np.zeros(0)
    return Trace(t, rng.integers(0, n_prompts, len(t)), name)


def periodic_trace(duration_s: float, qps: float, n_prompts: int, seed: int = 0) -> Trace:
    """Evenly spaced arrivals (deterministic inter-arrival times) at ``qps``."""
    n = int(duration_s * qps)
    rng = np.random.default_rng(seed)
    return Trace(np.arange(n) / qps, rng.integers(0, n_prompts, n), f"periodic{qps:g}")
