"""One interface over three model backends.

- ``diffusers``: any ``DiffusionPipeline`` from a local folder (GPU or CPU).
- ``tiny``: the same diffusers code path over small random-weight components built in code.
- ``replay``: serves the reference profile: sleeps the profiled batch latency (times a time
  factor) and returns the recorded discriminator scores, with a placeholder image.

``load_backend(spec)`` picks one from ``spec.backend`` and loads it, so that every
configuration error surfaces before the worker takes its first batch. Submodules are
imported lazily: a replay worker never imports torch or diffusers.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.errors import BackendError, BatchTooLargeError

if TYPE_CHECKING:
    from PIL import Image

    from planner.registry import ModelSpec

BACKENDS = ("replay", "tiny", "diffusers")

__all__ = ["BACKENDS", "Backend", "BackendError", "BatchTooLargeError", "Generation",
           "backend_class", "is_replay", "load_backend"]


@dataclass
class Generation:
    """The outcome of one batch."""

    images: list[Image.Image]
    seconds: float  # wall time of the batch
    quality: list[float] | None = None  # recorded discriminator scores (replay only), else None
    # The generation parameters actually used (steps, guidance, dtype, scheduler and its
    # timesteps, size, ...), so the worker can record them with each query; None: replay.
    params: dict[str, Any] | None = None


class Backend(abc.ABC):
    """A model that turns a batch of prompts into images.

    ``max_batch`` is the largest batch this worker was configured for (by default the
    largest batch size in the registry entry); bigger batches are refused, never split.
    """

    name: str = "?"

    def __init__(self, spec: ModelSpec, max_batch: int | None = None) -> None:
        self.spec = spec
        largest = max(spec.batch_sizes)
        if max_batch is None:
            max_batch = largest
        if not isinstance(max_batch, int) or max_batch < 1:
            raise BackendError(f"model {spec.name}: max_batch must be a positive integer, "
                               f"got {max_batch!r}")
        if max_batch > largest:
            raise BatchTooLargeError(
                f"model {spec.name}: batch size {max_batch} is larger than the configured "
                f"maximum {largest} (registry batch sizes {list(spec.batch_sizes)})"
            )
        self.max_batch = max_batch

    @property
    @abc.abstractmethod
    def loaded(self) -> bool:
        """Whether ``generate`` can run now."""

    @abc.abstractmethod
    def load(self) -> None:
        """Acquire weights/data; raise a ``BackendError`` on any configuration problem."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Release the model (and GPU memory), so a worker can switch to another model."""

    @abc.abstractmethod
    def warmup(self) -> None:
        """Run one throw-away batch so that the first real batch is not slowed by set-up."""

    @abc.abstractmethod
    def _generate(self, prompts: list[str], seeds: list[int]) -> Generation: ...

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> Generation:
        """Images for ``prompts``, one per prompt, each from its own seed."""
        prompts, seeds = self.check_batch(prompts, seeds)
        if not self.loaded:
            raise BackendError(f"model {self.spec.name}: {self.name} backend is not loaded")
        return self._generate(prompts, seeds)

    def check_batch(self, prompts: Sequence[str], seeds: Sequence[int]
                    ) -> tuple[list[str], list[int]]:
        if isinstance(prompts, str):
            raise BackendError("prompts must be a sequence of strings, not one string")
        prompts, seeds = list(prompts), [int(s) for s in seeds]
        if not prompts:
            raise BackendError(f"model {self.spec.name}: empty batch")
        if len(prompts) != len(seeds):
            raise BackendError(
                f"model {self.spec.name}: {len(prompts)} prompts but {len(seeds)} seeds"
            )
        if len(prompts) > self.max_batch:
            raise BatchTooLargeError(
                f"model {self.spec.name}: batch of {len(prompts)} is larger than the "
                f"configured maximum {self.max_batch}"
            )
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise BackendError(f"model {self.spec.name}: prompts must be strings, got {bad[0]!r}")
        return prompts, seeds

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "not loaded"
        return f"<{type(self).__name__} {self.spec.name} ({state})>"


def backend_class(kind: str) -> type[Backend]:
    """The class behind a registry ``backend`` name (imports only that backend's module).

    Besides the three names, ``package.module:ClassName`` names any ``Backend`` subclass
    (``HADIS_BACKEND``): a deployment's own model wrapper, or a test's faulty backend, with
    no test code in the workers."""
    if ":" in kind:
        return _import_backend(kind)
    if kind == "replay":
        from workers.backends.replay import ReplayBackend

        return ReplayBackend
    if kind == "tiny":
        from workers.backends.tiny import TinyBackend

        return TinyBackend
    if kind == "diffusers":
        from workers.backends.pipeline import DiffusersBackend

        return DiffusersBackend
    raise BackendError(f"unknown backend {kind!r} (use one of {', '.join(BACKENDS)}, "
                       "or package.module:ClassName)")


def _import_backend(ref: str) -> type[Backend]:
    import importlib

    module, _, name = ref.partition(":")
    if not module or not name:
        raise BackendError(f"backend {ref!r}: expected package.module:ClassName")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"backend {ref!r}: cannot import it ({exc})") from exc
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise BackendError(f"backend {ref!r} is not a workers.backends.Backend subclass")
    return obj


def is_replay(kind: str) -> bool:
    """Whether ``kind`` names the replay backend or a subclass of it (those sleep profiled
    latencies times ``HADIS_TIME_FACTOR`` and take its options)."""
    from workers.backends.replay import ReplayBackend

    try:
        return issubclass(backend_class(kind), ReplayBackend)
    except BackendError:
        return False


def load_backend(spec: ModelSpec, *, load: bool = True, **options: Any) -> Backend:
    """Build the backend ``spec.backend`` names, with ``options`` for its constructor, and
    load it (``load=False`` to defer). Errors are ``BackendError``s with one-line messages."""
    cls = backend_class(spec.backend)
    try:
        backend = cls(spec, **options)
    except TypeError as exc:
        raise BackendError(f"{spec.backend} backend: bad options {sorted(options)}: {exc}") from exc
    if load:
        backend.load()
    return backend
