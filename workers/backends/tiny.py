"""The ``tiny`` backend: the diffusers code path over a small random-weight Stable Diffusion
pipeline built in code (no weights, no hub), for tests and benchmarks on CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.backends.pipeline import DiffusersBackend

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from planner.registry import ModelSpec


class TinyBackend(DiffusersBackend):
    """Same ``load``/``generate`` as ``DiffusersBackend``; components come from
    ``workers.tiny`` with weights fixed by ``weights_seed``. Guidance defaults to 0 (no
    classifier-free guidance: it would double the work of a model that has nothing to guide)
    unless the entry or the option sets one.
    """

    name = "tiny"
    default_guidance = 0.0

    def __init__(self, spec: ModelSpec, max_batch: int | None = None, device: str = "cpu",
                 dtype: str | None = None, guidance_scale: float | None = None,
                 weights_seed: int = 0, call_options: dict[str, Any] | None = None) -> None:
        super().__init__(spec, max_batch=max_batch, device=device, dtype=dtype,
                         guidance_scale=guidance_scale, path=None, call_options=call_options)
        self.weights_seed = int(weights_seed)

    def _build_pipeline(self, dtype: torch.dtype) -> DiffusionPipeline:
        import torch
        from diffusers import StableDiffusionPipeline

        from workers.tiny import tiny_pipeline_components

        pipe = StableDiffusionPipeline(**tiny_pipeline_components(self.weights_seed),
                                       requires_safety_checker=False)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
