"""The offline bound: the same planner, told each period's true demand in advance.

``OracleDemand`` replaces the EWMA with the mean arrival rate of the coming planning
period, read off the trace. Nothing else changes, so the gap between a policy and its
oracle run is what better demand knowledge could buy.
"""

from __future__ import annotations

import numpy as np


class OracleDemand:
    def __init__(self, arrival_s: np.ndarray, period_s: float, peak_window_s: float = 0.0):
        self.arrival_s = np.asarray(arrival_s, dtype=float)
        self.period_s = float(period_s)
        self.peak_window_s = float(peak_window_s)
        self.t = 0.0

    def _rate(self, start: float) -> float:
        # (start, end]: an arrival exactly on a period boundary counts in the period it
        # closes, as in the simulator (arrivals are processed before a planning tick).
        end = start + self.period_s
        lo, hi = np.searchsorted(self.arrival_s, [start, end], side="right")
        return float(hi - lo) / self.period_s

    def initial(self) -> float:
        return self._rate(0.0)

    def observe(self, arrivals: float, dt_s: float) -> float:
        self.t += dt_s
        return self._rate(self.t)
