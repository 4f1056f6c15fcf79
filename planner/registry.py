"""The one model registry: every model declared once, everything else reads it.

Batch-latency assumption (the reference published batch-1 latencies only): a batch of
``b`` images takes ``L(b) = L(1) * (FIXED_SHARE + (1 - FIXED_SHARE) * b)``: a fixed share
of the batch-1 time (text encoding, VAE set-up, kernel launches) is paid once per batch,
the rest per image. With ``FIXED_SHARE = 0.2`` a batch of 16 serves an image in 81% of
the batch-1 time, in line with how little large 1024x1024 diffusion models gain from
batching on one GPU. Real curves measured with ``hadis profile run`` replace it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16)
FIXED_SHARE = 0.2


def affine_batch_latency(
    latency_b1: float, sizes: Sequence[int] = BATCH_SIZES, fixed_share: float = FIXED_SHARE
) -> dict[int, float]:
    if not (latency_b1 > 0 and math.isfinite(latency_b1)):
        raise ValueError(f"batch-1 latency must be a positive number, got {latency_b1}")
    return {b: round(latency_b1 * (fixed_share + (1.0 - fixed_share) * b), 6) for b in sizes}


@dataclass(frozen=True)
class ModelSpec:
    """One deployable model. ``latency`` maps batch size -> seconds for the whole batch."""

    id: int
    name: str
    queue: str  # queue suffix: light_<queue>, heavy_<queue>
    backend: str = "replay"  # replay | tiny | diffusers
    steps: int = 50
    resolution: int = 1024
    latency: Mapping[int, float] = field(default_factory=dict)
    path: str | None = None  # local weights folder for the diffusers backend

    def __post_init__(self) -> None:
        if not self.latency:
            raise ValueError(f"model {self.name}: no latency per batch size")
        for b, s in self.latency.items():
            if int(b) < 1 or not (s > 0 and math.isfinite(s)):
                raise ValueError(f"model {self.name}: bad latency {s!r} for batch size {b!r}")

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(int(b) for b in self.latency))

    def batch_latency(self, batch: int) -> float:
        try:
            return float(self.latency[batch])
        except KeyError as exc:
            raise ValueError(f"model {self.name}: no latency for batch size {batch}") from exc

    def batch_seconds(self, batch: int) -> float:
        """Seconds for a batch of any size up to the largest profiled one: the profiled
        figure, linearly interpolated between neighbouring sizes for a partial batch (e.g. 3
        between 2 and 4). The replay backend sleeps it and the simulator schedules by it."""
        sizes = self.batch_sizes
        if batch in sizes:
            return self.batch_latency(batch)
        if batch > sizes[-1]:
            raise ValueError(f"model {self.name}: batch of {batch} is larger than the "
                             f"largest profiled batch {sizes[-1]}")
        if batch < sizes[0]:
            return self.batch_latency(sizes[0]) * batch / sizes[0]
        lo = max(b for b in sizes if b < batch)
        hi = min(b for b in sizes if b > batch)
        w = (batch - lo) / (hi - lo)
        return (1 - w) * self.batch_latency(lo) + w * self.batch_latency(hi)

    @property
    def latency_b1(self) -> float:
        return self.batch_latency(min(self.batch_sizes))

    def throughput(self, batch: int) -> float:
        """Images per second of one worker running full batches of ``batch``."""
        return batch / self.batch_latency(batch)

    @property
    def light_queue(self) -> str:
        return f"light_{self.queue}"

    @property
    def heavy_queue(self) -> str:
        return f"heavy_{self.queue}"

    def to_dict(self) -> dict:
        return {
            "id": self.id, "name": self.name, "queue": self.queue, "backend": self.backend,
            "steps": self.steps, "resolution": self.resolution, "path": self.path,
            "latency": {str(b): s for b, s in sorted(self.latency.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelSpec:
        return cls(
            id=int(d["id"]), name=str(d["name"]), queue=str(d["queue"]),
            backend=str(d.get("backend", "replay")), steps=int(d.get("steps", 50)),
            resolution=int(d.get("resolution", 1024)), path=d.get("path"),
            latency={int(b): float(s) for b, s in dict(d["latency"]).items()},
        )


@dataclass(frozen=True)
class Registry:
    models: tuple[ModelSpec, ...]

    def __post_init__(self) -> None:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate model ids in registry: {ids}")
        queues = [m.queue for m in self.models]
        if len(set(queues)) != len(queues):
            raise ValueError(f"duplicate queue names in registry: {queues}")

    def __iter__(self):
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def get(self, model_id: int) -> ModelSpec:
        for m in self.models:
            if m.id == model_id:
                return m
        raise KeyError(f"unknown model id {model_id} (registry has {[m.id for m in self]})")

    def by_queue(self, queue: str) -> ModelSpec:
        for m in self.models:
            if queue in (m.queue, m.light_queue, m.heavy_queue):
                return m
        raise KeyError(f"no model serves queue {queue!r}")

    def ids(self) -> list[int]:
        return [m.id for m in self.models]

    def to_list(self) -> list[dict]:
        return [m.to_dict() for m in self.models]

    @classmethod
    def from_list(cls, rows: Iterable[Mapping]) -> Registry:
        return cls(tuple(ModelSpec.from_dict(r) for r in rows))


def sd35_registry(backend: str = "replay") -> Registry:
    """The four models of the reference profile (latency: one L40S, 1024x1024, batch 1)."""
    rows = [
        (0, "SDXL-Lightning", "sdxl", 2, 0.5),
        (1, "SD3.5-Large-Turbo", "sd35_large_turbo", 4, 1.3),
        (2, "SD3.5-Medium", "sd35_medium", 50, 13.0),
        (3, "SD3.5-Large", "sd35_large", 50, 27.0),
    ]
    return Registry(tuple(
        ModelSpec(id=i, name=n, queue=q, backend=backend, steps=s, resolution=1024,
                  latency=affine_batch_latency(l1))
        for i, n, q, s, l1 in rows
    ))
