"""Offline stand-ins for the real weights of ``hadis profile run --reference-images``: a
small random-weight CNN saved as TorchScript (the Inception's place), a tiny CLIP folder
(model + processor, for the CLIP score), a discriminator head on a tiny CLIP, two tiny
diffusers pipelines (SD and SDXL architectures) and a deployment file serving them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.deployment.conftest import write_deployment

FEATURES = 8


class TinyFeatures(nn.Module):
    """uint8 (N, 3, H, W) -> (N, FEATURES): two random convolutions, global mean pool."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.Tanh(),
                                     nn.Conv2d(8, FEATURES, 3, stride=2), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 127.5 - 1.0).mean(dim=(2, 3))


def save_feature_net(path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():  # the real Inception file is TorchScript too
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.script(TinyFeatures().eval()).save(str(path))
    return path


def save_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPImageProcessor, CLIPProcessor

    from workers.tiny import tiny_clip_model, tiny_tokenizer

    tiny_clip_model(seed=0).save_pretrained(str(folder))
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tiny_tokenizer())
    proc.save_pretrained(str(folder))
    return folder


def save_head(path: Path) -> Path:
    from workers.discriminator import Discriminator, MLPHead

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        head = MLPHead(32, hidden=16)
    Discriminator.tiny(seed=0, head=head, device="cpu").save_head(path)
    return path


def smooth_images(n: int, seed: int, size: int = 32):
    """Random smooth RGB images (a real-photo stand-in for the reference set)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
        out.append(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    return out


SD = {"name": "tiny-sd", "queue": "tsd", "backend": "diffusers",
      "pipeline": {"steps": 1, "guidance_scale": 0.0, "dtype": "fp32", "resolution": 32}}
XL = {"name": "tiny-xl", "queue": "txl", "backend": "diffusers",
      "pipeline": {"steps": 2, "guidance_scale": 0.0, "dtype": "fp32", "resolution": 32}}


def make_assets(root: Path, router_json: str, table: str = "sql:tinyfid") -> dict[str, Path]:
    """Every file a run needs, under ``root``."""
    from workers.tiny import save_tiny_pipeline

    root.mkdir(parents=True, exist_ok=True)
    refs = root / "reference"
    refs.mkdir()
    for i, im in enumerate(smooth_images(12, seed=7)):
        im.save(refs / f"ref{i:02d}.png")
    prompts = root / "prompts.txt"
    prompts.write_text("a red apple\na small boat\na dog on grass\na blue car\n")
    sd = save_tiny_pipeline(root / "sd", "sd")
    xl = save_tiny_pipeline(root / "xl", "sdxl")
    head = save_head(root / "head.pt")
    deploy = write_deployment(
        root / "deploy.toml", [{**SD, "path": str(sd)}, {**XL, "path": str(xl)}],
        router=router_json, table={"source": table, "prompts": str(prompts)})
    deploy.write_text(deploy.read_text() + f'\n[discriminator]\nhead = "{head}"\n')
    return {"deploy": deploy, "refs": refs, "prompts": prompts,
            "inception": save_feature_net(root / "features.pt"),
            "clip": save_tiny_clip(root / "clip"), "head": head}


if __name__ == "__main__":  # python -m tests.profile.tiny_assets DIR: the README's example
    import sys

    from hadis_celery.settings import DEFAULT_ROUTER_PROFILE

    a = make_assets(Path(sys.argv[1]), str(DEFAULT_ROUTER_PROFILE))
    print(" ".join(f"{k}={v}" for k, v in a.items()))
