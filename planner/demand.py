"""Demand estimate and plan hysteresis: the two smoothers around the MILP.

Demand is an exponentially weighted moving average of the arrival rate with a half-life in
seconds (not in samples), so the estimate reacts the same whether the planner runs every
second or every ten: after ``half_life_s`` seconds a step in demand is half absorbed.

Hysteresis keeps last period's configuration when it is still feasible and the new
optimum improves FID by less than ``min_fid_gain``: near-equal rows (the table has many
within 0.01 FID) would otherwise make thresholds and worker bindings flap every period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class EwmaDemand:
    """EWMA of arrivals per second. ``observe(arrivals, dt_s)`` folds in one interval."""

    def __init__(self, half_life_s: float = 30.0, initial: float | None = None) -> None:
        if not (isinstance(half_life_s, int | float) and math.isfinite(half_life_s)
                and half_life_s > 0):
            raise ValueError(f"half-life must be a positive number of seconds, got {half_life_s!r}")
        if initial is not None and not (math.isfinite(initial) and initial >= 0):
            raise ValueError(f"initial demand must be a finite rate >= 0, got {initial!r}")
        self.half_life_s = float(half_life_s)
        self._value: float | None = None if initial is None else float(initial)

    @property
    def value(self) -> float:
        """The current estimate (0 before any observation)."""
        return 0.0 if self._value is None else self._value

    def weight(self, dt_s: float) -> float:
        """Weight of a new interval of ``dt_s`` seconds: ``1 - 2**(-dt / half_life)``."""
        return 1.0 - 2.0 ** (-dt_s / self.half_life_s)

    def observe(self, arrivals: float, dt_s: float) -> float:
        """Fold in ``arrivals`` counted over the last ``dt_s`` seconds; return the estimate."""
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"interval must be a positive number of seconds, got {dt_s!r}")
        if not (math.isfinite(arrivals) and arrivals >= 0):
            raise ValueError(f"arrivals must be a finite count >= 0, got {arrivals!r}")
        rate = arrivals / dt_s
        if self._value is None:
            self._value = rate
        else:
            self._value += self.weight(dt_s) * (rate - self._value)
        return self._value


@dataclass(frozen=True)
class Hysteresis:
    """Keep the previous configuration unless the new one is better by ``min_fid_gain``."""

    min_fid_gain: float = 0.2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_fid_gain) and self.min_fid_gain >= 0):
            raise ValueError(f"min_fid_gain must be a finite number >= 0, got {self.min_fid_gain}")

    def keep_previous(self, previous_fid: float, new_fid: float) -> bool:
        """True when switching would gain less than ``min_fid_gain`` FID (the caller then
        re-plans the previous configuration and keeps it if it is still feasible)."""
        return previous_fid - new_fid < self.min_fid_gain


OFF = Hysteresis(0.0)
