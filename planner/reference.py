"""Readers for the paper artifact's measurements in ``../shared/reference``.

The files are read in place (never copied into the repository); every reader raises
``ReferenceDataError`` with the file (and line) at fault, so CLIs can print one clear line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGES_PER_PROMPT = 4
QUALITY_COLUMN = 1  # softmax column "real" of the artifact's CLIP+MLP discriminator


class ReferenceDataError(ValueError):
    """A reference file is missing or malformed."""


def reference_dir() -> Path:
    """The reference folder: ``$HADIS_REFERENCE_DIR`` or ``../shared/reference`` of the repo."""
    env = os.environ.get("HADIS_REFERENCE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "reference"


def reference_path(*parts: str) -> Path:
    path = reference_dir().joinpath(*parts)
    if not path.exists():
        raise ReferenceDataError(
            f"{path}: not found (set HADIS_REFERENCE_DIR to the reference measurements folder)"
        )
    return path


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """One prompt per line; blank lines are kept so that line numbers stay prompt indices.

    Lines end at ``\n`` only (a CRLF ending loses its ``\r``): a lone carriage return
    inside a prompt must not split it and shift every later index by one.
    """
    p = Path(path)
    if not p.is_file():
        raise ReferenceDataError(f"{p}: no such prompt file")
    with p.open(encoding="utf-8", errors="replace", newline="\n") as fh:
        return [line.removesuffix("\n").removesuffix("\r") for line in fh]


def read_quality_scores(path: str | os.PathLike[str], n_prompts: int | None = None) -> np.ndarray:
    """Per-prompt quality score: column 1 of a ``scores_model_K.txt``, mean over its 4 images."""
    p = Path(path)
    if not p.is_file():
        raise ReferenceDataError(f"{p}: no such score file")
    rows: list[float] = []
    with p.open() as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if len(parts) != 2:
                raise ReferenceDataError(f"{p}:{lineno}: expected 2 columns, got {len(parts)}")
            try:
                value = float(parts[QUALITY_COLUMN])
            except ValueError as exc:
                raise ReferenceDataError(f"{p}:{lineno}: not a number: {parts[1]!r}") from exc
            if not np.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ReferenceDataError(f"{p}:{lineno}: score {value} outside [0, 1]")
            rows.append(value)
    if len(rows) % IMAGES_PER_PROMPT:
        raise ReferenceDataError(
            f"{p}: {len(rows)} lines is not a multiple of {IMAGES_PER_PROMPT} images per prompt"
        )
    per_prompt = np.asarray(rows).reshape(-1, IMAGES_PER_PROMPT).mean(axis=1)
    if n_prompts is not None and len(per_prompt) != n_prompts:
        raise ReferenceDataError(
            f"{p}: {len(per_prompt)} prompts scored ({len(rows)} lines), "
            f"the prompt set has {n_prompts}"
        )
    return per_prompt


def read_model_scores(profile_dir: str | os.PathLike[str], n_prompts: int | None = None
                      ) -> dict[int, np.ndarray]:
    """Per-prompt quality scores of every ``scores_model_K.txt`` in a profile folder."""
    d = Path(profile_dir)
    files = sorted(d.glob("scores_model_*.txt"))
    if not files:
        raise ReferenceDataError(f"{d}: no scores_model_K.txt files")
    out: dict[int, np.ndarray] = {}
    for f in files:
        try:
            k = int(f.stem.rsplit("_", 1)[1])
        except ValueError as exc:
            raise ReferenceDataError(f"{f}: cannot read the model index from the name") from exc
        out[k] = read_quality_scores(f, n_prompts)
    return out
