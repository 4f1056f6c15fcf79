"""The ``diffusers`` backend: any ``DiffusionPipeline`` from a local folder, batched, with
one seeded generator per prompt, on CUDA (fp16/bf16) or CPU. The ``tiny`` backend subclasses
it and only replaces how the pipeline is obtained."""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
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

    Generation settings come from the deployment's model entry (``spec.steps``,
    ``spec.resolution`` and ``spec.pipeline``: guidance, dtype, scheduler and its options
    such as ``timestep_spacing``, height/width, negative prompt, CPU offload, VAE
    slicing/tiling, ``torch.compile``); an explicit constructor option wins over the entry,
    the pipeline's own default applies to what neither sets. Each ``Generation`` carries the
    parameters actually used, read back from the pipeline (``params``).
    """

    name = "diffusers"
    default_guidance: float | None = None  # when neither the option nor the entry sets one

    def __init__(self, spec: ModelSpec, max_batch: int | None = None, device: str = "auto",
                 dtype: str | None = None, guidance_scale: float | None = None,
                 path: str | None = None, call_options: dict[str, Any] | None = None) -> None:
        super().__init__(spec, max_batch)
        self.device_name = device
        self.settings = spec.pipeline
        self.dtype_name = dtype if dtype is not None else self.settings.dtype
        guidance = next((g for g in (guidance_scale, self.settings.guidance_scale,
                                     self.default_guidance) if g is not None), None)
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

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images: the entry's, else its square resolution."""
        res = self.spec.resolution
        return self.settings.height or res, self.settings.width or res

    def _check_spec(self) -> None:
        steps = self.spec.steps
        for what, res in zip(("height", "width"), self.size, strict=True):
            if res < 8 or res % 8:
                raise BackendError(f"model {self.spec.name}: resolution {res} ({what}) is not "
                                   "a positive multiple of 8")
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
        self._set_scheduler(pipe)
        try:
            if self.settings.cpu_offload == "none":
                pipe = pipe.to(self.device)
            else:
                self._offload(pipe)
            self._memory_options(pipe)
        except BackendError:
            del pipe
            free_memory(self.device)
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. out of GPU memory: leave nothing behind
            del pipe
            free_memory(self.device)
            raise BackendError(f"model {self.spec.name}: cannot move the pipeline to "
                               f"{self.device}: {_one_line(exc)}") from exc
        pipe.set_progress_bar_config(disable=True)
        self._accepts_size = "height" in params and "width" in params
        self._accepts_negative = "negative_prompt" in params
        self._guidance_default = (params["guidance_scale"].default
                                  if "guidance_scale" in params else None)
        if self.settings.negative_prompt and not self._accepts_negative:
            raise BackendError(f"model {self.spec.name}: {type(pipe).__name__} takes no "
                               "negative prompt (remove pipeline.negative_prompt)")
        self.pipeline = pipe

    def _set_scheduler(self, pipe: DiffusionPipeline) -> None:
        """The entry's scheduler class (a diffusers scheduler name) and config overrides
        (e.g. ``timestep_spacing = "trailing"`` for few-step distilled models), from the pipeline's
        own scheduler config."""
        name, options = self.settings.scheduler, dict(self.settings.scheduler_options)
        if not name and not options:
            return
        import diffusers

        current = getattr(pipe, "scheduler", None)
        if current is None:
            raise BackendError(f"model {self.spec.name}: the pipeline has no scheduler to set")
        cls = type(current) if not name else getattr(diffusers, name, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise BackendError(f"model {self.spec.name}: pipeline.scheduler {name!r} is not a "
                               "diffusers scheduler class (e.g. EulerDiscreteScheduler)")
        unknown = sorted(set(options) - set(current.config) - set(
            inspect.signature(cls.__init__).parameters))
        if unknown:
            raise BackendError(f"model {self.spec.name}: pipeline.scheduler_options "
                               f"{unknown} are not options of {cls.__name__}")
        try:
            pipe.scheduler = cls.from_config(current.config, **options)
        except Exception as exc:  # noqa: BLE001 - a bad option value is a configuration error
            raise BackendError(f"model {self.spec.name}: cannot build {cls.__name__} with "
                               f"{options}: {_one_line(exc)}") from exc

    def _offload(self, pipe: DiffusionPipeline) -> None:
        if self.device.type != "cuda":
            raise BackendError(f"model {self.spec.name}: memory.cpu_offload = "
                               f"{self.settings.cpu_offload!r} needs a CUDA device, got "
                               f"{self.device}")
        if self.settings.cpu_offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.enable_sequential_cpu_offload(device=self.device)

    def _memory_options(self, pipe: DiffusionPipeline) -> None:
        vae = getattr(pipe, "vae", None)
        for flag, method in (("vae_slicing", "enable_slicing"), ("vae_tiling", "enable_tiling")):
            if getattr(self.settings, flag):
                if vae is None or not hasattr(vae, method):
                    raise BackendError(f"model {self.spec.name}: memory.{flag}: the pipeline's "
                                       "VAE does not support it")
                getattr(vae, method)()
        if self.settings.compile:
            import torch

            name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
            denoiser = getattr(pipe, name, None)
            if denoiser is None:
                raise BackendError(f"model {self.spec.name}: memory.compile: no unet or "
                                   "transformer to compile")
            setattr(pipe, name, torch.compile(denoiser))

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
        height, width = self.size
        if self._accepts_size:
            kwargs.update(height=height, width=width)
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        if self.settings.negative_prompt:
            kwargs["negative_prompt"] = [self.settings.negative_prompt] * len(prompts)
        kwargs.update(self.settings.call_options)
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
        return Generation(images=images, seconds=seconds, quality=None,
                          params=self.used_params(kwargs, images))

    def used_params(self, kwargs: Mapping[str, Any], images: list) -> dict[str, Any]:
        """What this batch actually ran with, read back from the pipeline where it can be
        (dtype of the denoiser, the scheduler's class, spacing and timesteps, image size)."""
        pipe = self.pipeline
        sched = getattr(pipe, "scheduler", None)
        config = dict(getattr(sched, "config", {}) or {})
        guidance = kwargs.get("guidance_scale", self._guidance_default)
        timesteps = getattr(sched, "timesteps", None)
        return {
            "model": self.spec.name, "backend": self.name,
            "steps": int(kwargs["num_inference_steps"]),
            "guidance_scale": None if guidance is None else float(guidance),
            "dtype": str(pipe.dtype).removeprefix("torch."), "device": str(self.device),
            "scheduler": type(sched).__name__ if sched is not None else None,
            "timestep_spacing": config.get("timestep_spacing"),
            "timesteps": [] if timesteps is None else [round(float(t), 3) for t in timesteps],
            "height": images[0].height, "width": images[0].width,
            "negative_prompt": self.settings.negative_prompt,
            "cpu_offload": self.settings.cpu_offload, "vae_slicing": self.settings.vae_slicing,
            "vae_tiling": self.settings.vae_tiling, "compile": self.settings.compile,
        }
