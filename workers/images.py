"""Reading and checking images for the discriminator: a corrupt file or an image of the wrong
size is refused with one line naming it, before any batch runs."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from workers.errors import ImageInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MIN_SIDE = 8

ImageLike = Image.Image | str | os.PathLike | Any  # PIL image, file path or HxWxC array


def _name(x: object, i: int) -> str:
    return str(x) if isinstance(x, (str, os.PathLike)) else f"image #{i}"


def open_image(x: ImageLike, index: int = 0, expected_size: tuple[int, int] | None = None
               ) -> Image.Image:
    """An RGB PIL image from a PIL image, a file path or an HxW(xC) uint8 array; decodes it
    fully so that a truncated file fails here rather than inside a batch."""
    name = _name(x, index)
    try:
        if isinstance(x, Image.Image):
            img = x
            img.load()
        elif isinstance(x, (str, os.PathLike)):
            path = Path(x)
            if not path.is_file():
                raise ImageInputError(f"{path}: no such image file")
            with Image.open(path) as fh:
                fh.load()
                img = fh.copy()
        elif hasattr(x, "__array__"):
            import numpy as np

            arr = np.asarray(x)
            if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
                raise ImageInputError(f"{name}: arrays must be HxW or HxWxC uint8, got "
                                      f"{arr.dtype} with shape {arr.shape}")
            img = Image.fromarray(arr)
        else:
            raise ImageInputError(f"{name}: not an image ({type(x).__name__})")
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{name}: not a readable image (corrupt or truncated: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                              ) from exc
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise ImageInputError(f"{name}: {w}x{h} is too small (at least {MIN_SIDE} px a side)")
    if expected_size is not None and (w, h) != tuple(expected_size):
        raise ImageInputError(f"{name}: size {w}x{h}, expected "
                              f"{expected_size[0]}x{expected_size[1]}")
    return img if img.mode == "RGB" else img.convert("RGB")


def list_images(directory: str | os.PathLike[str], limit: int | None = None) -> list[Path]:
    """Image files of a folder (sorted, not recursive); an empty or missing folder is an error."""
    d = Path(directory)
    if not d.is_dir():
        raise ImageInputError(f"{d}: no such folder")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageInputError(f"{d}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files[:limit] if limit else files


def expand_inputs(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders replaced by their image files."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        out.extend(list_images(p) if p.is_dir() else [p])
    return out
