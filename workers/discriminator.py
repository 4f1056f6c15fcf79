"""The quality discriminator: a frozen CLIP vision tower with a trained MLP head.

``score(images, prompts)`` returns, per image, ``quality`` = P(real) from the head (the
light model's output is accepted when it is high enough) and ``clip`` = the cosine between
CLIP's image and text embeddings. The head reads CLIP's projected, L2-normalised image
embedding. CLIP comes from a local folder (``local_files_only``) or, in tests, from a tiny
random config built in code (``Discriminator.tiny``). The head file records which CLIP it
was trained on, so ``Discriminator.load(head)`` rebuilds the same scorer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from workers.device import free_memory, resolve_device, resolve_dtype
from workers.errors import DiscriminatorError, ImageInputError
from workers.images import ImageLike, open_image

if TYPE_CHECKING:
    from PIL import Image
    from transformers import CLIPModel

HEAD_FORMAT = "hadis-disc-head/1"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Score:
    quality: float  # P(real) from the trained head
    clip: float  # cosine similarity of the CLIP image and text embeddings


class MLPHead(nn.Module):
    """Standardise the CLIP embedding, then a two-hidden-layer MLP to one logit (real)."""

    def __init__(self, in_dim: int, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_dim, self.hidden, self.dropout = int(in_dim), int(hidden), float(dropout)
        self.register_buffer("mean", torch.zeros(self.in_dim))
        self.register_buffer("std", torch.ones(self.in_dim))
        self.net = nn.Sequential(
            nn.Linear(self.in_dim, self.hidden), nn.GELU(), nn.Dropout(self.dropout),
            nn.Linear(self.hidden, self.hidden // 2), nn.GELU(), nn.Dropout(self.dropout),
            nn.Linear(self.hidden // 2, 1),
        )

    def set_normalisation(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.std).squeeze(-1)


@dataclass(frozen=True)
class Preprocess:
    """CLIP's image transform: resize the short side, centre crop, normalise."""

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        from PIL import Image

        s = self.size
        out = np.empty((len(images), s, s, 3), dtype=np.float32)
        for i, img in enumerate(images):
            w, h = img.size
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            out[i] = np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.float32)
        out = (out / 255.0 - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    @classmethod
    def from_folder(cls, path: Path, default_size: int) -> Preprocess:
        """Read ``preprocessor_config.json`` when the CLIP folder has one."""
        cfg_path = path / "preprocessor_config.json"
        if not cfg_path.is_file():
            return cls(default_size)
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DiscriminatorError(f"{cfg_path}: unreadable ({exc})") from exc
        crop = cfg.get("crop_size", default_size)
        size = crop.get("height", default_size) if isinstance(crop, dict) else int(crop)
        return cls(int(size), tuple(cfg.get("image_mean", CLIP_MEAN)),
                   tuple(cfg.get("image_std", CLIP_STD)))


class Discriminator:
    """Frozen CLIP + MLP head, batched on one device."""

    def __init__(self, clip: CLIPModel, tokenizer: Any, preprocess: Preprocess,
                 head: MLPHead | None = None, *, clip_source: dict[str, Any] | None = None,
                 device: str = "auto", dtype: str | None = None, batch_size: int = 32,
                 expected_size: int | tuple[int, int] | None = None) -> None:
        if batch_size < 1:
            raise DiscriminatorError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.clip = clip.to(self.device, self.dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.clip_source = dict(clip_source or {"kind": "unknown"})
        self.batch_size = int(batch_size)
        if isinstance(expected_size, int):
            expected_size = (expected_size, expected_size)
        self.expected_size = expected_size
        self.feature_dim = int(clip.config.projection_dim)
        self.head: MLPHead | None = None
        if head is not None:
            self.set_head(head)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0, image_size: int = 32, width: int = 32,
             head: MLPHead | None = None, **options: Any) -> Discriminator:
        """A tiny random CLIP (built in code, deterministic under ``seed``), for tests."""
        from workers.tiny import tiny_clip_model, tiny_tokenizer

        clip = tiny_clip_model(seed, image_size=image_size, width=width)
        source = {"kind": "tiny", "seed": seed, "image_size": image_size, "width": width}
        return cls(clip, tiny_tokenizer(), Preprocess(image_size), head, clip_source=source,
                   **options)

    @classmethod
    def from_pretrained(cls, clip_path: str | os.PathLike[str], head: MLPHead | None = None,
                        **options: Any) -> Discriminator:
        """A CLIPModel (and its tokenizer) from a local folder; never touches the hub."""
        from transformers import CLIPModel, CLIPTokenizer

        path = Path(clip_path).expanduser()
        if not path.is_dir():
            raise DiscriminatorError(f"CLIP weights folder {path} does not exist")
        if not (path / "config.json").is_file():
            raise DiscriminatorError(f"{path} is not a CLIP model folder (no config.json)")
        try:
            clip = CLIPModel.from_pretrained(str(path), local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a configuration error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise DiscriminatorError(f"cannot load CLIP from {path}: {type(exc).__name__}: "
                                     f"{first}") from exc
        preprocess = Preprocess.from_folder(path, int(clip.config.vision_config.image_size))
        return cls(clip, tokenizer, preprocess, head,
                   clip_source={"kind": "path", "path": str(path.resolve())}, **options)

    @classmethod
    def load(cls, head_path: str | os.PathLike[str], clip_path: str | os.PathLike[str] | None
             = None, **options: Any) -> Discriminator:
        """A saved head with the CLIP it records (or ``clip_path`` to override it)."""
        head, meta = load_head(head_path)
        source = meta.get("clip") or {}
        if clip_path is not None:
            return cls.from_pretrained(clip_path, head, **options)
        if source.get("kind") == "tiny":
            return cls.tiny(int(source.get("seed", 0)), int(source.get("image_size", 32)),
                            int(source.get("width", 32)), head, **options)
        if source.get("kind") == "path":
            return cls.from_pretrained(source["path"], head, **options)
        raise DiscriminatorError(f"{head_path}: the head does not record its CLIP model; "
                                 "pass the CLIP folder")

    def set_head(self, head: MLPHead) -> None:
        if head.in_dim != self.feature_dim:
            raise DiscriminatorError(f"the head expects {head.in_dim}-d CLIP embeddings, this "
                                     f"CLIP ({self.clip_source.get('kind')}) gives "
                                     f"{self.feature_dim}-d")
        self.head = head.to(self.device).eval()

    def close(self) -> None:
        """Drop the models and free GPU memory."""
        self.clip = None  # type: ignore[assignment]
        self.head = None
        free_memory(self.device)

    # -- features and scores ---------------------------------------------------------------
    def _images(self, images: Sequence[ImageLike]) -> list[Image.Image]:
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise ImageInputError("images must be a sequence of images or paths")
        return [open_image(x, i, self.expected_size) for i, x in enumerate(images)]

    @torch.inference_mode()
    def _image_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.device, self.dtype)
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        emb = self.clip.visual_projection(pooled).float()
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.inference_mode()
    def _text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        limit = min(77, self.clip.config.text_config.max_position_embeddings)
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=limit,
                             return_tensors="pt")
        out = self.clip.text_model(input_ids=tok["input_ids"].to(self.device),
                                   attention_mask=tok["attention_mask"].to(self.device))
        emb = self.clip.text_projection(out.pooler_output).float()
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def features(self, images: Sequence[ImageLike], progress: bool = False) -> torch.Tensor:
        """Normalised CLIP image embeddings (CPU float32), ``batch_size`` images at a time."""
        from tqdm.auto import tqdm

        checked = self._images(images)
        chunks = []
        for i in tqdm(range(0, len(checked), self.batch_size), desc="CLIP features",
                      unit="batch", disable=not progress):
            chunks.append(self._image_embeddings(checked[i:i + self.batch_size]).cpu())
        if not chunks:
            return torch.empty(0, self.feature_dim)
        return torch.cat(chunks)

    def score(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[Score]:
        """Quality (P(real)) and CLIP score for each (image, prompt) pair, batched."""
        if self.head is None:
            raise DiscriminatorError("no trained head loaded (train one with "
                                     "`hadis discriminator train`)")
        if isinstance(prompts, str):
            raise DiscriminatorError("prompts must be a sequence of strings, not one string")
        checked = self._images(images)
        if len(checked) != len(prompts):
            raise DiscriminatorError(f"{len(checked)} images but {len(prompts)} prompts")
        out: list[Score] = []
        for i in range(0, len(checked), self.batch_size):
            img = self._image_embeddings(checked[i:i + self.batch_size])
            txt = self._text_embeddings([str(p) for p in prompts[i:i + self.batch_size]])
            with torch.inference_mode():
                quality = torch.sigmoid(self.head(img)).cpu().tolist()
            clip = (img * txt).sum(-1).cpu().tolist()
            out.extend(Score(float(q), float(c)) for q, c in zip(quality, clip, strict=True))
        return out

    def save_head(self, path: str | os.PathLike[str], **meta: Any) -> None:
        if self.head is None:
            raise DiscriminatorError("no head to save")
        save_head(self.head, path, clip=self.clip_source, **meta)


def save_head(head: MLPHead, path: str | os.PathLike[str], **meta: Any) -> None:
    """Write the head (weights, normalisation, the CLIP it reads, training figures)."""
    p = Path(path)
    if p.parent and not p.parent.is_dir():
        p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    torch.save({"format": HEAD_FORMAT, "in_dim": head.in_dim, "hidden": head.hidden,
                "dropout": head.dropout, "state_dict": state, "meta": meta}, p)


def load_head(path: str | os.PathLike[str]) -> tuple[MLPHead, dict[str, Any]]:
    """Read a head file written by ``save_head``; anything else is refused with one line."""
    p = Path(path)
    if not p.is_file():
        raise DiscriminatorError(f"{p}: no such head file")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise DiscriminatorError(f"{p}: not a discriminator head file ({type(exc).__name__})"
                                 ) from exc
    if not isinstance(data, dict) or data.get("format") != HEAD_FORMAT:
        raise DiscriminatorError(f"{p}: not a discriminator head file (format "
                                 f"{data.get('format') if isinstance(data, dict) else None!r})")
    head = MLPHead(int(data["in_dim"]), int(data["hidden"]), float(data.get("dropout", 0.1)))
    try:
        head.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise DiscriminatorError(f"{p}: head weights do not match its shape") from exc
    return head.eval(), dict(data.get("meta") or {})
