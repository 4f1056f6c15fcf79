"""The ``diffusers`` backend: any ``DiffusionPipeline`` from a local folder, batched, with
one seeded generator per prompt, on CUDA (fp16/bf16) or CPU. The ``tiny`` backend subclasses
it and only replaces how the pipeline is obtained."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.backends import Backend, BackendError, Generation
from workers.device import free_memory, resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from planner.registry import ModelSpec

SEED_LIMIT = 2**63


def _diffusers_version() -> tuple[int, int]:
    import diffusers

    major, minor = (diffusers.__version__.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class DiffusersBackend(Backend):
    """A diffusers text-to-image pipeline loaded with ``local_files_only`` (never the hub).

    Steps and resolution come from the registry entry; ``guidance_scale`` from the option,
    else from ``spec.guidance`` when the registry carries one, else the pipeline's default.
    """

    name = "diffusers"

    def __init__(self, spec: ModelSpec, max_batch: int | None = None, device: str = "auto",
                 dtype: str | None = None, guidance_scale: float | None = None,
                 path: str | None = None, call_options: dict[str, Any] | None = None) -> None:
        super().__init__(spec, max_batch)
        self.device_name = device
        self.dtype_name = dtype
        guidance = guidance_scale if guidance_scale is not None else getattr(spec, "guidance", None)
        self.guidance_scale = None if guidance is None else float(guidance)
        self.path = path if path is not None else spec.path
        self.call_options = dict(call_options or {})
        self.pipeline: DiffusionPipeline | None = None
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self._accepts_size = True

    # -- loading -------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.pipeline is not None

    def _check_spec(self) -> None:
        res, steps = self.spec.resolution, self.spec.steps
        if res < 8 or res % 8:
            raise BackendError(f"model {self.spec.name}: resolution {res} is not a positive "
                               "multiple of 8")
        if steps < 1:
            raise BackendError(f"model {self.spec.name}: steps must be at least 1, got {steps}")

    def _build_pipeline(self, dtype: torch.dtype) -> DiffusionPipeline:
        """Load the pipeline folder; every failure becomes a one-line ``BackendError``."""
        from diffusers import DiffusionPipeline

        if not self.path:
            raise BackendError(f"model {self.spec.name}: the diffusers backend needs a weights "
                               "path (set `path` in the registry entry)")
        path = Path(self.path).expanduser()
        if not path.exists():
            raise BackendError(f"model {self.spec.name}: weights path {path} does not exist")
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise BackendError(f"model {self.spec.name}: {path} is not a diffusers pipeline "
                               "folder (no model_index.json)")
        # diffusers renamed torch_dtype to dtype (0.36); older releases only know torch_dtype
        dtype_kw = "dtype" if _diffusers_version() >= (0, 36) else "torch_dtype"
        try:
            pipe = DiffusionPipeline.from_pretrained(
                str(path), local_files_only=True, **{dtype_kw: dtype}
            )
        except Exception as exc:  # noqa: BLE001 - any loader failure is a configuration error
            raise BackendError(f"model {self.spec.name}: cannot load the pipeline at {path}: "
                               f"{_one_line(exc)}") from exc
        return pipe

    def load(self) -> None:
        if self.loaded:
            return
        from diffusers import DiffusionPipeline

        self._check_spec()
        self.device = resolve_device(self.device_name)
        self.dtype = resolve_dtype(self.dtype_name, self.device)
        pipe = self._build_pipeline(self.dtype)
        if not isinstance(pipe, DiffusionPipeline):
            raise BackendError(f"model {self.spec.name}: {type(pipe).__name__} is not a "
                               "DiffusionPipeline")
        params = inspect.signature(pipe.__call__).parameters
        missing = [p for p in ("prompt", "generator", "num_inference_steps") if p not in params]
        if missing:
            raise BackendError(f"model {self.spec.name}: {type(pipe).__name__} is not a "
                               f"text-to-image pipeline (its call lacks {', '.join(missing)})")
        try:
            pipe = pipe.to(self.device)
        except Exception as exc:  # noqa: BLE001 - e.g. out of GPU memory: leave nothing behind
            del pipe
            free_memory(self.device)
            raise BackendError(f"model {self.spec.name}: cannot move the pipeline to "
                               f"{self.device}: {_one_line(exc)}") from exc
        pipe.set_progress_bar_config(disable=True)
        self._accepts_size = "height" in params and "width" in params
        self.pipeline = pipe

    def unload(self) -> None:
        if self.pipeline is None:
            return
        self.pipeline = None
        free_memory(self.device)

    def memory_bytes(self) -> int:
        """Bytes held by the parameters and buffers of the loaded pipeline (0 when unloaded)."""
        import torch

        if self.pipeline is None:
            return 0
        total = 0
        for component in self.pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                for t in list(component.parameters()) + list(component.buffers()):
                    total += t.numel() * t.element_size()
        return total

    def warmup(self) -> None:
        self.generate(["warm-up"], [0])

    # -- generation ----------------------------------------------------------------------
    def _generate(self, prompts: list[str], seeds: list[int]) -> Generation:
        import torch

        for s in seeds:
            if not 0 <= s < SEED_LIMIT:
                raise BackendError(f"seed {s} outside [0, 2**63)")
        assert self.pipeline is not None and self.device is not None
        generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        kwargs: dict[str, Any] = dict(prompt=prompts, num_inference_steps=self.spec.steps,
                                      generator=generators, output_type="pil")
        if self._accepts_size:
            kwargs.update(height=self.spec.resolution, width=self.spec.resolution)
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        kwargs.update(self.call_options)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.pipeline(**kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        images = list(out.images)
        if len(images) != len(prompts):
            raise BackendError(f"model {self.spec.name}: pipeline returned {len(images)} images "
                               f"for {len(prompts)} prompts")
        return Generation(images=images, seconds=seconds, quality=None)
