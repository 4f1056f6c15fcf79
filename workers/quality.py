"""Image-set quality for profiling: FID against reference images and CLIP score per image,
both computed by torchmetrics (never by hand).

- **Features for FID** come from a feature network in a local file:
  the TorchScript Inception-v3 ``inception-2015-12-05.pt`` that clean-fid and StyleGAN2-ADA
  use (the paper's table was built with clean-fid), or any TorchScript module taking uint8
  ``(N, 3, H, W)`` images in 0..255 and returning ``(N, d)`` features (tests use a small
  random-weight CNN). torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` works
  too, through torchmetrics' ``feature_extractor_weights_path``, where torch-fidelity can be
  imported (it needs a torchvision built for the installed torch; PyPI's torchvision does
  not import beside the CPU build of torch 2.13 used here).
- **FID** is torchmetrics' ``FrechetInceptionDistance``. Features are extracted once per
  image and cached; each routed mix is then scored by feeding its cached features through
  an identity feature module (``FidScorer``), so a grid of hundreds of mixes costs hundreds
  of covariance square roots, not hundreds of Inception passes.
- **CLIP score** is torchmetrics' ``clip_score`` (``100 * max(cos, 0)`` of CLIP's image and
  text embeddings) with a CLIP model and processor from a local folder.

Nothing downloads: a missing file raises ``MetricSetupError`` naming it and how to get it.
Images are resized to 299 x 299 (bicubic, as clean-fid does) before feature extraction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from PIL import Image

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                 + INCEPTION_FILE)
INCEPTION_SIZE = 299
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLIP_HOWTO = ("save one on a machine with internet access: python -c \"from transformers import "
              "CLIPModel, CLIPProcessor; m = 'openai/clip-vit-large-patch14'; "
              "CLIPModel.from_pretrained(m).save_pretrained('DIR'); "
              "CLIPProcessor.from_pretrained(m).save_pretrained('DIR')\" and copy DIR here")


class MetricSetupError(ValueError):
    """A metric's weights or inputs are missing or unusable (one line, with the fix)."""


def inception_howto(path: Path) -> str:
    return (f"download {INCEPTION_FILE} (the TorchScript Inception-v3 of clean-fid and "
            f"StyleGAN2-ADA) on a machine with internet access from {INCEPTION_URL} and copy "
            f"it to {path} (or pass --inception FILE / set HADIS_INCEPTION)")


# -- feature extraction ----------------------------------------------------------------------
class TorchScriptFeatures(nn.Module):
    """A TorchScript feature network as a module: uint8 images in, ``(N, d)`` floats out.
    Calls ``forward(x, return_features=True)`` when the network takes that argument (the
    clean-fid / StyleGAN Inception returns its 2048-d pool features then)."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = module
        try:
            names = [a.name for a in module.forward.schema.arguments]
        except AttributeError:
            names = []
        self.return_features = "return_features" in names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x, return_features=True) if self.return_features else self.module(x)
        return out.reshape(x.shape[0], -1).float()


class FeatureExtractor:
    """Features of PIL images with a feature network (see ``load_feature_extractor``)."""

    def __init__(self, module: nn.Module, source: str = "", device: str = "cpu",
                 batch_size: int = 32, size: int = INCEPTION_SIZE) -> None:
        self.module = module.to(device).eval()
        self.source, self.device, self.size = source, torch.device(device), int(size)
        self.batch_size = max(1, int(batch_size))

    def _tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        from PIL import Image

        arr = np.stack([np.asarray(im.convert("RGB").resize(
            (self.size, self.size), Image.Resampling.BICUBIC), dtype=np.uint8) for im in images])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(N, d)`` float64 features, ``batch_size`` images at a time."""
        chunks = []
        for i in range(0, len(images), self.batch_size):
            x = self._tensor(images[i:i + self.batch_size]).to(self.device)
            chunks.append(self.module(x).double().cpu().numpy())
        if not chunks:
            raise MetricSetupError("no images to extract features from")
        return np.concatenate(chunks)


def load_feature_extractor(path: str | os.PathLike[str], device: str = "cpu",
                           batch_size: int = 32) -> FeatureExtractor:
    """The feature network in ``path``: a TorchScript file (``inception-2015-12-05.pt``, or
    a test's small CNN), else torch-fidelity Inception weights through torchmetrics."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MetricSetupError(f"Inception weights {p} not found: {inception_howto(p)}")
    import warnings

    try:
        with warnings.catch_warnings():  # TorchScript is the format the Inception ships in
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            module = torch.jit.load(str(p), map_location=device)
    except (RuntimeError, ValueError):
        return FeatureExtractor(_fidelity_inception(p), f"torch-fidelity weights {p}",
                                device, batch_size)
    return FeatureExtractor(TorchScriptFeatures(module), f"TorchScript {p}", device,
                            batch_size)


def _fidelity_inception(p: Path) -> nn.Module:
    """torchmetrics' Inception (torch-fidelity's network) with the weights at ``p``."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(p)
                                        ).inception
    except ModuleNotFoundError as exc:
        raise MetricSetupError(
            f"{p} is not a TorchScript file, and reading it as torch-fidelity Inception "
            f"weights needs torch-fidelity, which cannot be imported here ({exc.name or exc}); "
            f"use the TorchScript {INCEPTION_FILE} from {INCEPTION_URL}") from None
    except Exception as exc:  # noqa: BLE001 - a foreign file: say which and what to use
        raise MetricSetupError(f"{p}: not an Inception weights file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                               f"{inception_howto(p)}") from None


# -- FID ------------------------------------------------------------------------------------
class _Precomputed(nn.Module):
    """Identity 'feature extractor': hands cached features to torchmetrics' FID."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FidScorer:
    """FID of feature sets against one reference set (torchmetrics, float64)."""

    def __init__(self, real: np.ndarray) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        real = np.asarray(real, dtype=np.float64)
        if real.ndim != 2 or len(real) < 2:
            raise MetricSetupError(f"FID needs at least 2 reference images, got {len(real)}")
        self.dim = real.shape[1]
        self.metric = FrechetInceptionDistance(feature=_Precomputed(self.dim),
                                               reset_real_features=False)
        self.metric.update(torch.from_numpy(real), real=True)
        self.n_real = len(real)

    def __call__(self, fake: np.ndarray) -> float:
        fake = np.asarray(fake, dtype=np.float64)
        if fake.ndim != 2 or fake.shape[1] != self.dim or len(fake) < 2:
            raise MetricSetupError(f"FID needs at least 2 images of {self.dim}-d features, "
                                   f"got shape {fake.shape}")
        self.metric.reset()  # keeps the reference features
        self.metric.update(torch.from_numpy(fake), real=False)
        return float(self.metric.compute())


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (torchmetrics)."""
    return FidScorer(real)(fake)


# -- CLIP score -------------------------------------------------------------------------------
class _ClipEmbeddings(nn.Module):
    """A CLIPModel with the contract torchmetrics' ``clip_score`` documents for custom
    models: ``get_image_features``/``get_text_features`` returning the projected embeddings
    as tensors (transformers 5 returns a ``BaseModelOutputWithPooling`` holding them)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.clip.get_text_features(*args, **kwargs))


class ClipScorer:
    """torchmetrics' CLIP score per (image, prompt), CLIP from a local folder."""

    def __init__(self, folder: str | os.PathLike[str], device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        p = Path(folder).expanduser()
        if not (p / "config.json").is_file():
            what = "not found" if not p.exists() else "is not a CLIP model folder (no config.json)"
            raise MetricSetupError(f"CLIP folder {p} {what}: {CLIP_HOWTO}")
        try:
            self.model = _ClipEmbeddings(
                CLIPModel.from_pretrained(str(p), local_files_only=True)).to(device)
            self.processor = CLIPProcessor.from_pretrained(str(p), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - a broken folder is a setup error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise MetricSetupError(f"CLIP folder {p}: cannot load model and processor "
                                   f"({type(exc).__name__}: {first[:160]}); {CLIP_HOWTO}"
                                   ) from None
        self.model.eval()
        self.folder, self.device = p, torch.device(device)

    def _pair(self) -> tuple[Any, Any]:
        return self.model, self.processor

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """One score in [0, 100] per image."""
        import warnings

        from torchmetrics.functional.multimodal import clip_score

        if len(images) != len(prompts):
            raise MetricSetupError(f"{len(images)} images but {len(prompts)} prompts")
        out = np.empty(len(images))
        with warnings.catch_warnings():  # long captions are truncated to CLIP's length
            warnings.filterwarnings("ignore", message=".*caption longer than.*")
            for i, (im, text) in enumerate(zip(images, prompts, strict=True)):
                x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())
                x = x.permute(2, 0, 1).to(self.device)
                out[i] = float(clip_score(x, str(text), self._pair))
        return out


# -- reference images -------------------------------------------------------------------------
def reference_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted); at least two."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise MetricSetupError(f"reference images folder {p} not found (a folder of real "
                               "images, e.g. 5,000 photos matching the prompt set)")
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES
                   and f.is_file())
    if len(files) < 2:
        raise MetricSetupError(f"reference images folder {p}: {len(files)} images "
                               f"({', '.join(IMAGE_SUFFIXES)}); FID needs at least 2")
    return files


def open_images(paths: Sequence[Path]) -> list[Image.Image]:
    """RGB images from files; an unreadable one is named."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in paths:
        try:
            with Image.open(f) as im:
                out.append(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise MetricSetupError(f"{f}: not a readable image ({type(exc).__name__})") from None
    return out
