"""Images for profiling, cached on disk, and their per-image scores.

``hadis profile run --reference-images`` generates k images per prompt with every model
(image j of prompt i has seed ``seed + i k + j``, the same on every model, as a rerouted
query keeps its seed). Each image is a PNG under
``CACHE/<model>-<fingerprint>/<sha1(prompt)[:16]>-s<seed>.png``: the fingerprint hashes
what changes the picture (backend, weights path, steps, resolution, pipeline settings), so
a changed model never reuses old images, and an interrupted run resumes where it stopped
(each file is written under a temporary name and renamed, so a half-written image never
counts). Scoring then streams the files in chunks: discriminator score, CLIP score and
feature vector per image, without holding every image in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from planner.registry import ModelSpec

ImageFn = Callable[[Sequence["Image.Image"], Sequence[str]], np.ndarray]


def model_key(spec: ModelSpec) -> str:
    """Folder name of a model's images: its name and a hash of what shapes its images."""
    what = {"backend": spec.backend, "path": spec.path, "steps": spec.steps,
            "resolution": spec.resolution, "pipeline": asdict(spec.pipeline)}
    digest = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.name).strip("_") or "model"
    return f"{slug}-{digest[:10]}"


@dataclass(frozen=True)
class ImageSet:
    """One model's images for the prompt set: prompt-major, k per prompt."""

    paths: tuple[Path, ...]
    texts: tuple[str, ...]  # the prompt of each image
    seeds: tuple[int, ...]
    generated: int  # made in this run
    cached: int  # found on disk
    params: Mapping[str, Any] | None  # generation parameters the backend reported


class ImageCache:
    """PNG files by model, prompt and seed under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def folder(self, spec: ModelSpec) -> Path:
        return self.root / model_key(spec)

    def path(self, spec: ModelSpec, prompt: str, seed: int) -> Path:
        h = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]
        return self.folder(spec) / f"{h}-s{int(seed)}.png"

    def generate(self, backend: Any, spec: ModelSpec, prompts: Sequence[str], k: int,
                 batch: int, seed: int = 0, progress: Callable[[int], object] | None = None
                 ) -> ImageSet:
        """Every (prompt, seed) image, generating only those not on disk yet."""
        if k < 1 or batch < 1:
            raise ValueError(f"k and batch must be >= 1, got k={k}, batch={batch}")
        jobs = [(p, seed + i * k + j) for i, p in enumerate(prompts) for j in range(k)]
        paths = [self.path(spec, p, s) for p, s in jobs]
        missing = [(p, s, f) for (p, s), f in zip(jobs, paths, strict=True) if not f.is_file()]
        folder = self.folder(spec)
        folder.mkdir(parents=True, exist_ok=True)
        params_file = folder / "params.json"
        params = json.loads(params_file.read_text()) if params_file.is_file() else None
        if progress is not None and len(jobs) > len(missing):
            progress(len(jobs) - len(missing))
        for start in range(0, len(missing), batch):
            chunk = missing[start:start + batch]
            gen = backend.generate([p for p, _, _ in chunk], [s for _, s, _ in chunk])
            if len(gen.images) != len(chunk):
                raise ValueError(f"model {spec.name}: {len(gen.images)} images for "
                                 f"{len(chunk)} prompts")
            for (_, _, f), im in zip(chunk, gen.images, strict=True):
                tmp = f.with_name(f.stem + ".part.png")
                im.save(tmp, format="PNG")
                os.replace(tmp, f)
            if gen.params is not None:
                params = dict(gen.params)
                params_file.write_text(json.dumps(params, indent=1, default=str))
            if progress is not None:
                progress(len(chunk))
        return ImageSet(tuple(paths), tuple(p for p, _ in jobs), tuple(s for _, s in jobs),
                        generated=len(missing), cached=len(jobs) - len(missing),
                        params=params)


def score_images(paths: Sequence[Path], texts: Sequence[str],
                 scorers: Mapping[str, ImageFn],
                 features: Callable[[Sequence[Image.Image]], np.ndarray] | None = None,
                 chunk: int = 64, progress: Callable[[int], object] | None = None
                 ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Per-image values of every scorer (e.g. ``disc``, ``clip``) and the feature matrix,
    reading the files ``chunk`` at a time."""
    from workers.quality import open_images

    values: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    feats: list[np.ndarray] = []
    for start in range(0, len(paths), chunk):
        images = open_images(paths[start:start + chunk])
        batch_texts = list(texts[start:start + chunk])
        for name, fn in scorers.items():
            v = np.asarray(fn(images, batch_texts), dtype=float)
            if v.shape != (len(images),):
                raise ValueError(f"{name}: {v.shape} scores for {len(images)} images")
            values[name].append(v)
        if features is not None:
            feats.append(features(images))
        if progress is not None:
            progress(len(images))
    out = {name: np.concatenate(v) if v else np.empty(0) for name, v in values.items()}
    return out, (np.concatenate(feats) if feats else None)
