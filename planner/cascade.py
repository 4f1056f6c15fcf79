"""``CascadeConfig``: one profiled operating point of a two-model cascade.

A query is scored by the router; above θ it runs on the heavy model directly (share
``router_ratio``). Otherwise it runs on the light model and the discriminator scores the
image; below τ it is rerouted to the heavy model (share ``disc_ratio`` of the light runs).
Single-model operation is the degenerate row of a pair: all-light (both ratios 0) or
all-heavy (``router_ratio`` 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CascadeConfig:
    light: int
    heavy: int
    router_ratio: float  # share of all queries the router sends straight to heavy
    theta: float  # router score threshold realising router_ratio (+inf: none heavy)
    disc_ratio: float  # share of light outputs the discriminator rejects
    tau: float  # discriminator quality threshold realising disc_ratio (-inf: none)
    fid: float  # quality of the served mix, lower is better
    quality: float = float("nan")  # mean discriminator score of the served images
    service_s: float = 0.0  # expected service seconds per query at batch 1
    # Added by the profiler (issue 3); defaults keep older call sites valid.
    light_s: float = float("nan")  # light model's batch-1 seconds per image
    heavy_s: float = float("nan")  # heavy model's batch-1 seconds per image
    metric: str = "fid"  # what ``fid`` holds: "fid", or "disc" (1 - mean disc. score)

    @property
    def frac_light(self) -> float:
        """Share of all queries that run on the light model."""
        return 1.0 - self.router_ratio

    @property
    def frac_direct(self) -> float:
        """Share of all queries that go straight to the heavy model."""
        return self.router_ratio

    @property
    def frac_rerouted(self) -> float:
        """Share of all queries that run light, are rejected, and run heavy too."""
        return (1.0 - self.router_ratio) * self.disc_ratio

    @property
    def frac_heavy(self) -> float:
        """Share of all queries that run on the heavy model (direct + rerouted)."""
        return self.router_ratio + self.frac_rerouted

    def load_per_query(self) -> dict[int, float]:
        """Executions per query per model id (the demand multiplier the planner covers)."""
        if self.light == self.heavy:
            return {self.light: 1.0}
        return {self.light: self.frac_light, self.heavy: self.frac_heavy}

    def gpu_s_per_query(self) -> dict[int, float]:
        """Batch-1 GPU-seconds per query per model id: executions per query x seconds.

        This is the load the planner covers with workers (a worker on model ``m`` at batch
        ``b`` supplies ``b / L_m(b)`` executions per second), so it is the cost the Pareto
        pruning compares; mean latency alone would hide on which model the time is spent.
        """
        secs = {self.light: self.light_s, self.heavy: self.heavy_s}
        return {m: n * secs[m] for m, n in self.load_per_query().items()}

    @property
    def gpu_s_total(self) -> float:
        """Batch-1 GPU-seconds per query over both models."""
        return sum(self.gpu_s_per_query().values())

    @property
    def pair(self) -> tuple[int, int]:
        return (self.light, self.heavy)

    def to_dict(self) -> dict:
        return asdict(self)
