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
from dataclasses import asdict, dataclass, field
from typing import Any

BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16)
FIXED_SHARE = 0.2


def affine_batch_latency(
    latency_b1: float, sizes: Sequence[int] = BATCH_SIZES, fixed_share: float = FIXED_SHARE
) -> dict[int, float]:
    if not (latency_b1 > 0 and math.isfinite(latency_b1)):
        raise ValueError(f"batch-1 latency must be a positive number, got {latency_b1}")
    return {b: round(latency_b1 * (fixed_share + (1.0 - fixed_share) * b), 6) for b in sizes}


OFFLOAD_MODES = ("none", "model", "sequential")


@dataclass(frozen=True)
class PipelineSettings:
    """How a model generates (the diffusers backend applies them; replay ignores them).

    ``None`` leaves the pipeline's own default: distilled models need ``guidance_scale = 0``
    and their scheduler's ``timestep_spacing``, which no pipeline default gives them, so the
    deployment file declares them per model. ``height``/``width`` default to the model's
    ``resolution``; ``call_options`` go to the pipeline call as they are.
    """

    guidance_scale: float | None = None
    dtype: str | None = None  # fp32 | fp16 | bf16 (None: fp16 on CUDA, fp32 on CPU)
    scheduler: str | None = None  # a diffusers scheduler class name, e.g. EulerDiscreteScheduler
    scheduler_options: Mapping[str, Any] = field(default_factory=dict)  # timestep_spacing, ...
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    cpu_offload: str = "none"  # none | model | sequential (needs accelerate and CUDA)
    vae_slicing: bool = False
    vae_tiling: bool = False
    compile: bool = False  # torch.compile the denoiser
    call_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cpu_offload not in OFFLOAD_MODES:
            raise ValueError(f"cpu_offload: expected one of {', '.join(OFFLOAD_MODES)}, "
                             f"got {self.cpu_offload!r}")

    def to_dict(self) -> dict:
        """Only the fields that differ from the defaults (stored snapshots stay short)."""
        default = PipelineSettings()
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self).items()
                if v != getattr(default, k)}

    @classmethod
    def from_dict(cls, d: Mapping | None) -> PipelineSettings:
        return cls(**dict(d or {}))


@dataclass(frozen=True)
class ModelSpec:
    """One deployable model. ``latency`` maps batch size -> seconds for the whole batch.

    ``plan = False`` keeps the model declared (its queues exist) but out of planning: no
    plan names it, so no query is ever sent to it."""

    id: int
    name: str
    queue: str  # queue suffix: light_<queue>, heavy_<queue>
    backend: str = "replay"  # replay | tiny | diffusers
    steps: int = 50
    resolution: int = 1024
    latency: Mapping[int, float] = field(default_factory=dict)
    path: str | None = None  # local weights folder for the diffusers backend
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    plan: bool = True
    # Seconds a worker is unavailable when it changes to this model (unload, load, warm-up):
    # declared in the deployment file, or measured by the workers (``with_swap_s``); None:
    # the global swap delay (``HADIS_SWAP_DELAY_S``) applies.
    swap_s: float | None = None

    def __post_init__(self) -> None:
        if self.swap_s is not None and not (math.isfinite(self.swap_s) and self.swap_s >= 0):
            raise ValueError(f"model {self.name}: swap_s must be a finite number >= 0, got "
                             f"{self.swap_s!r}")
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

    def swap_seconds(self, default: float) -> float:
        """Seconds a worker moving to this model serves nothing: its own swap time when
        declared or measured, else ``default`` (the global swap delay)."""
        return float(default if self.swap_s is None else self.swap_s)

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
        d = {
            "id": self.id, "name": self.name, "queue": self.queue, "backend": self.backend,
            "steps": self.steps, "resolution": self.resolution, "path": self.path,
            "latency": {str(b): s for b, s in sorted(self.latency.items())},
        }
        pipeline = self.pipeline.to_dict()
        if pipeline:
            d["pipeline"] = pipeline
        if not self.plan:
            d["plan"] = False
        if self.swap_s is not None:
            d["swap_s"] = self.swap_s
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelSpec:
        return cls(
            id=int(d["id"]), name=str(d["name"]), queue=str(d["queue"]),
            backend=str(d.get("backend", "replay")), steps=int(d.get("steps", 50)),
            resolution=int(d.get("resolution", 1024)), path=d.get("path"),
            latency={int(b): float(s) for b, s in dict(d["latency"]).items()},
            pipeline=PipelineSettings.from_dict(d.get("pipeline")), plan=bool(d.get("plan", True)),
            swap_s=None if d.get("swap_s") is None else float(d["swap_s"]),
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

    def planned(self) -> Registry:
        """The models planning may use (``plan = True``)."""
        return Registry(tuple(m for m in self.models if m.plan))

    def to_list(self) -> list[dict]:
        return [m.to_dict() for m in self.models]

    @classmethod
    def from_list(cls, rows: Iterable[Mapping]) -> Registry:
        return cls(tuple(ModelSpec.from_dict(r) for r in rows))


def with_swap_s(registry: Registry, swap_s: Mapping[str, float]) -> Registry:
    """``registry`` with the swap times of ``swap_s`` (model name -> seconds, e.g. measured
    by the workers) replacing the declared ones; models not in it keep theirs."""
    from dataclasses import replace

    return Registry(tuple(replace(m, swap_s=float(swap_s[m.name])) if m.name in swap_s else m
                          for m in registry))
