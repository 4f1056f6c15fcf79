"""Heavier Azure-shaped traces, generated from the hourly Azure Functions invocations.

The reference traces ``azure_multi_1toNqps.txt`` compress the 347 hours of
``traces/azure_functions_hourly_invocations.csv`` to 347 seconds (hour ``h`` becomes second
``h``) and scale the invocations min-max so demand runs from 1 to N queries per second
(their per-second counts follow ``1 + (N - 1) * (x - min) / (max - min)``). The reference
set stops at N = 32, well inside what 16 workers can serve; the traces here reuse that
compression and scaling up to higher peaks (issue 21: up to 4x the 1-to-20 trace's), and
reshape the one published series in ways that keep its real day profiles:

- ``orig``: the series as published;
- ``rotN``: rotated by N whole days (a different day opens the run, when the EWMA is cold);
- ``shufS``: its whole days in a seeded random order (midnight joins become steps, the
  rises and falls the smooth original lacks), the partial last day kept last;
- ``rev``: time reversed (long rises become long falls, HADIS's weak spot).

Arrivals are Poisson per second at the scaled rate, uniform within the second; prompts are
uniform over the prompt set. Everything is seeded, so a name and seed give the same trace.
The CSV is read from the reference folder, never copied.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from sim.trace import Trace, TraceError

HOURLY_CSV = "azure_functions_hourly_invocations.csv"
HOURS_PER_DAY = 24
SHAPE_RE = re.compile(r"^(orig|rev|rot(\d+)|shuf(\d+))$")
# The generated set the bound bench reports: 4 shapes x 3 peaks (1-to-20's peak times 2, 3, 4).
SHAPES = ("orig", "shuf1", "rev", "rot5")
PEAKS = (40.0, 60.0, 80.0)


def read_hourly(path: str | os.PathLike[str]) -> np.ndarray:
    """The invocations column of the hourly CSV (header ``,hour,invocations``)."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{p}: no such file")
    rows: list[float] = []
    with p.open() as fh:
        header = fh.readline().strip().split(",")
        if "invocations" not in header:
            raise TraceError(f"{p}:1: expected an 'invocations' column, got {header}")
        col = header.index("invocations")
        for lineno, line in enumerate(fh, 2):
            parts = line.strip().split(",")
            if len(parts) != len(header):
                raise TraceError(f"{p}:{lineno}: expected {len(header)} columns")
            try:
                v = float(parts[col])
            except ValueError:
                raise TraceError(f"{p}:{lineno}: not a number: {parts[col]!r}") from None
            if not np.isfinite(v) or v < 0:
                raise TraceError(f"{p}:{lineno}: negative or non-finite invocations")
            rows.append(v)
    if len(rows) < 2:
        raise TraceError(f"{p}: needs at least two hours")
    return np.asarray(rows)


def reshape(hourly: np.ndarray, shape: str) -> np.ndarray:
    """The hourly series in the order ``shape`` names (module doc)."""
    m = SHAPE_RE.match(shape)
    if m is None:
        raise ValueError(f"unknown shape {shape!r}: use orig, rev, rotN or shufS")
    n_days = len(hourly) // HOURS_PER_DAY
    days = [hourly[d * HOURS_PER_DAY:(d + 1) * HOURS_PER_DAY] for d in range(n_days)]
    tail = hourly[n_days * HOURS_PER_DAY:]
    if shape == "orig":
        return hourly.copy()
    if shape == "rev":
        return hourly[::-1].copy()
    if m.group(2) is not None:
        return np.roll(hourly, -HOURS_PER_DAY * int(m.group(2)))
    order = np.random.default_rng(int(m.group(3))).permutation(n_days)
    return np.concatenate([days[d] for d in order] + [tail])


def scaled_rates(series: np.ndarray, peak_qps: float, floor_qps: float = 1.0) -> np.ndarray:
    """Min-max scaling to ``[floor_qps, peak_qps]``, the reference traces' rule."""
    if not (np.isfinite(peak_qps) and peak_qps >= floor_qps >= 0):
        raise ValueError(f"need peak >= floor >= 0, got {peak_qps}, {floor_qps}")
    span = float(series.max() - series.min())
    unit = (series - series.min()) / span if span > 0 else np.zeros_like(series)
    return floor_qps + (peak_qps - floor_qps) * unit


def azure_trace(reference: str | os.PathLike[str], shape: str = "orig", peak_qps: float = 40.0,
                n_prompts: int = 5000, seed: int = 0, floor_qps: float = 1.0,
                seconds_per_hour: float = 1.0) -> Trace:
    """A trace of ``shape`` scaled to ``floor_qps..peak_qps``, one hour per
    ``seconds_per_hour`` (1: the reference compression, 347 hours to 347 s)."""
    hourly = read_hourly(Path(reference) / "traces" / HOURLY_CSV)
    rates = scaled_rates(reshape(hourly, shape), peak_qps, floor_qps)
    rng = np.random.default_rng([seed, int(round(peak_qps * 1000)), sum(map(ord, shape))])
    counts = rng.poisson(rates * seconds_per_hour)
    starts = np.repeat(np.arange(len(rates)) * seconds_per_hour, counts)
    t = np.sort(starts + rng.uniform(0.0, seconds_per_hour, counts.sum()))
    name = f"azure-{shape}-1to{peak_qps:g}"
    return Trace(t, rng.integers(0, n_prompts, len(t)), name)


def generated_traces(reference: str | os.PathLike[str], shapes: tuple[str, ...] = SHAPES,
                     peaks: tuple[float, ...] = PEAKS, n_prompts: int = 5000,
                     seed: int = 0) -> list[Trace]:
    """Every ``shape x peak`` trace, in that order."""
    return [azure_trace(reference, s, p, n_prompts, seed) for s in shapes for p in peaks]
