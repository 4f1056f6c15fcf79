"""Backend benchmark: tiny-backend images/s (batch 1 and 8), discriminator images/s on the
tiny CLIP config (batch 1 and 32), replay overhead, and, when a GPU is present, latencies of
the real architectures (random weights) per batch size in the registry format.

Run from the repo root: ``python -m bench.backends``. The last line is one JSON object.

GPU latencies are ``steps x denoiser step + batch x VAE decode`` (fp16, 1024x1024): the
denoiser step is timed at the batch it really runs (doubled for classifier-free guidance on
the 50-step models), the VAE one image at a time as a server decodes large batches; text
encoders (once per batch, small next to the denoiser) are left out.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPEATS = 5
TINY_RESOLUTION, TINY_STEPS = 64, 2
GPU_BATCHES = (1, 2, 4, 8, 16)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median_seconds(fn: Callable[[], Any], repeats: int = REPEATS, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_tiny() -> dict:
    from planner.registry import ModelSpec
    from workers.backends import load_backend

    spec = ModelSpec(id=0, name="tiny-sd", queue="tiny", backend="tiny", steps=TINY_STEPS,
                     resolution=TINY_RESOLUTION, latency={1: 1.0, 8: 1.0})
    t = time.perf_counter()
    backend = load_backend(spec)
    load_s = time.perf_counter() - t
    out: dict[str, Any] = {"resolution": TINY_RESOLUTION, "steps": TINY_STEPS,
                           "load_s": round(load_s, 3), "batch_s": {}, "images_per_s": {}}
    for b in (1, 8):
        prompts, seeds = [f"a photo of thing {i}" for i in range(b)], list(range(b))
        s = median_seconds(lambda p=prompts, q=seeds: backend.generate(p, q))
        out["batch_s"][str(b)] = round(s, 4)
        out["images_per_s"][str(b)] = round(b / s, 2)
        log(f"tiny backend batch {b}: {s:.3f} s, {b / s:.1f} images/s")
    backend.unload()
    return out


def bench_discriminator() -> dict:
    import numpy as np

    from workers.discriminator import Discriminator, MLPHead

    disc = Discriminator.tiny(seed=0, device="cpu", batch_size=32)
    disc.set_head(MLPHead(disc.feature_dim))  # speed does not depend on the head's training
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (TINY_RESOLUTION, TINY_RESOLUTION, 3), dtype=np.uint8)
              for _ in range(32)]
    out: dict[str, Any] = {"clip": "tiny random (2 layers, width 32, 32x32 input)",
                           "batch_s": {}, "images_per_s": {}}
    for b in (1, 32):
        s = median_seconds(lambda n=b: disc.score(images[:n], ["a photo"] * n))
        out["batch_s"][str(b)] = round(s, 5)
        out["images_per_s"][str(b)] = round(b / s, 1)
        log(f"discriminator batch {b}: {s * 1000:.1f} ms, {b / s:.0f} images/s")
    return out


def bench_replay() -> dict:
    from dataclasses import replace

    from hadis_celery.deployment import registry
    from workers.backends import load_backend

    first = next(iter(registry()))  # the deployment's first model, replayed at no delay
    backend = load_backend(replace(first, backend="replay"), time_factor=0.0)
    s = median_seconds(lambda: backend.generate(["a cat"] * 8, list(range(8))))
    log(f"replay batch 8 at time factor 0: {s * 1000:.2f} ms")
    return {"batch8_overhead_ms": round(s * 1000, 3)}


# -- real architectures on a GPU ----------------------------------------------------------

def _shrunk(cfg: dict) -> dict:
    """A small version of a config with the same structure (CPU smoke run of this code)."""
    c = dict(cfg)
    if "num_layers" in c:
        c.update(num_layers=2, num_attention_heads=2, caption_projection_dim=128,
                 joint_attention_dim=64, pooled_projection_dim=32, sample_size=16,
                 pos_embed_max_size=32)
        if "dual_attention_layers" in c:
            c["dual_attention_layers"] = (0,)
    elif "transformer_layers_per_block" in c:
        c.update(block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 1),
                 attention_head_dim=(2, 4, 4), cross_attention_dim=32, layers_per_block=1,
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
                 sample_size=16)
    else:
        c.update(block_out_channels=(32, 32, 32, 32), layers_per_block=1)
    return c


def _time_model(name: str, kind: str, cfg: dict, vae_cfg: dict, latent_ch: int, steps: int,
                cfg_guidance: bool, dev: Any, res: int, batches: tuple[int, ...],
                repeats: int) -> dict:
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel

    dtype = torch.float16 if dev.type == "cuda" else torch.float32

    def timed(fn: Callable[[], Any]) -> float:
        def run() -> None:
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        return median_seconds(run, repeats=repeats)

    log(f"{name}: building random-weight {kind} on {dev}")
    with torch.device(dev):
        model = (UNet2DConditionModel(**cfg) if kind == "unet"
                 else SD3Transformer2DModel(**cfg)).eval()
        vae = AutoencoderKL(latent_channels=latent_ch, **vae_cfg).eval()
    if dtype != torch.float32:
        model, vae = model.to(dtype), vae.to(dtype)
    vae_scale = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    lat = res // vae_scale
    latencies: dict[str, float] = {}
    with torch.inference_mode():
        z1 = torch.randn(1, latent_ch, lat, lat, device=dev, dtype=dtype)
        vae_s = timed(lambda: vae.decode(z1))
        for b in batches:
            n = 2 * b if cfg_guidance else b
            x = torch.randn(n, latent_ch, lat, lat, device=dev, dtype=dtype)
            t = torch.full((n,), 500.0, device=dev, dtype=dtype)
            if kind == "unet":
                text = (cfg["projection_class_embeddings_input_dim"]
                        - 6 * cfg["addition_time_embed_dim"])
                kwargs = {"encoder_hidden_states": torch.randn(
                              n, 77, cfg["cross_attention_dim"], device=dev, dtype=dtype),
                          "added_cond_kwargs": {
                              "text_embeds": torch.randn(n, text, device=dev, dtype=dtype),
                              "time_ids": torch.randn(n, 6, device=dev, dtype=dtype)}}
                args: tuple = (x, t)
            else:
                kwargs = {"hidden_states": x, "timestep": t,
                          "encoder_hidden_states": torch.randn(
                              n, 333, cfg["joint_attention_dim"], device=dev, dtype=dtype),
                          "pooled_projections": torch.randn(
                              n, cfg["pooled_projection_dim"], device=dev, dtype=dtype)}
                args = ()
            try:
                step_s = timed(lambda a=args, k=kwargs: model(*a, **k))
            except torch.OutOfMemoryError:
                log(f"{name}: batch {b} out of memory")
                break
            latencies[str(b)] = round(steps * step_s + b * vae_s, 4)
            log(f"{name}: batch {b}: step {step_s * 1000:.1f} ms -> {latencies[str(b)]} s")
    return {"steps": steps, "cfg": cfg_guidance, "resolution": res,
            "vae_decode_s": round(vae_s, 4), "latency": latencies}


def real_architecture_latency(device: str = "cuda", batches: tuple[int, ...] = GPU_BATCHES,
                              shrink: bool = False, repeats: int = 3) -> dict:
    """Seconds per batch of the packaged example's architectures with random weights."""
    import torch

    from hadis_celery.examples.architectures import ARCHITECTURES, VAE

    dev = torch.device(device)
    res = 128 if shrink else 1024
    out: dict[str, Any] = {}
    for name, kind, cfg, latent_ch, steps, cfg_guidance in ARCHITECTURES:
        out[name] = _time_model(name, kind, _shrunk(cfg) if shrink else cfg,
                                _shrunk(VAE) if shrink else VAE, latent_ch, steps,
                                cfg_guidance, dev, res, batches, repeats)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> dict:
    import torch

    result: dict[str, Any] = {"bench": "backends", "torch_threads": torch.get_num_threads(),
                              "cpu_count": os.cpu_count()}
    result["tiny_backend"] = bench_tiny()
    result["discriminator_tiny"] = bench_discriminator()
    result["replay"] = bench_replay()
    if torch.cuda.is_available():
        result["gpu"] = {"device": torch.cuda.get_device_name(0),
                         "models": real_architecture_latency("cuda")}
    else:
        result["gpu"] = None
        log("no GPU: real-architecture latencies not measured")
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
