"""Fixtures of the backend and discriminator tests: one tiny backend and one set of generated
and real images per session (building them is the slow part)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from planner.registry import ModelSpec  # noqa: E402

# Real photographs bundled with scikit-image (no download): the "real" class. Left out: `page`
# (a scanned document) and `immunohistochemistry` (a stained tissue slide): not photographs
# of scenes, and with 14 sources one odd held-out source decides the validation AUC.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera", "moon",
          "coins", "grass", "gravel", "brick", "retina", "cell", "stereo_motorcycle")
N_GENERATED = 48


def tiny_spec(resolution: int = 64, steps: int = 2, backend: str = "tiny",
              path: str | None = None, model_id: int = 0) -> ModelSpec:
    return ModelSpec(id=model_id, name="tiny-sd", queue="tiny", backend=backend, steps=steps,
                     resolution=resolution, latency={1: 0.2, 2: 0.3, 4: 0.5, 8: 0.9},
                     path=path)


@pytest.fixture(scope="session")
def tiny_backend():
    from workers.backends import load_backend

    backend = load_backend(tiny_spec())
    yield backend
    backend.unload()


@pytest.fixture(scope="session")
def generated_images(tiny_backend) -> list:
    images = []
    for i in range(0, N_GENERATED, 8):
        prompts = [f"a photo of thing number {j}" for j in range(i, i + 8)]
        images += tiny_backend.generate(prompts, list(range(i, i + 8))).images
    return images


@pytest.fixture(scope="session")
def real_photos() -> dict:
    import numpy as np
    import skimage.data
    from PIL import Image

    photos = {}
    for name in PHOTOS:
        arr = getattr(skimage.data, name)()
        if isinstance(arr, tuple):  # stereo_motorcycle: (left, right, disparity)
            arr = arr[0]
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8)
        img = Image.fromarray(arr).convert("RGB")
        img.thumbnail((512, 512))
        photos[name] = img
    return photos


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory, real_photos, generated_images) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("disc-data")
    real, gen = root / "real", root / "generated"
    real.mkdir()
    gen.mkdir()
    for name, img in real_photos.items():
        img.save(real / f"{name}.png")
    for i, img in enumerate(generated_images):
        img.save(gen / f"gen_{i:03d}.png")
    return real, gen


@pytest.fixture(scope="session")
def make_spec():
    """``tiny_spec`` for test modules (conftest helpers cannot be imported directly)."""
    return tiny_spec
