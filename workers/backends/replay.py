"""The ``replay`` backend: serves the reference profile instead of running a model.

A batch sleeps the profiled batch latency times ``time_factor`` and returns, per prompt, the
discriminator score the reference recorded for that model (reference prompts) or a
deterministic draw from that model's recorded score distribution (any other prompt), with a
256x256 placeholder image that says it is a stand-in ("stand-in (replay backend)") and
names the model, the replayed score and the prompt. Needs numpy and Pillow only.

Score sources (``load_score_table``), cached per process:

- a reference profile folder (``profile-sd35/`` with ``scores_model_K.txt``; the prompt set
  is ``../prompts/imagenet1k_captions_5k.txt`` beside it): recorded per-prompt scores plus
  their distribution;
- a score-quantiles JSON (format ``hadis-score-quantiles/1``, written by
  ``write_score_quantiles``), or a profile table JSON with ``score_quantiles`` (``hadis
  profile export``): the distribution only, so a worker runs without ``../shared``.

Unknown prompts: each model's score is its quantile function at ``Phi(z_k)`` with
``z_k = sqrt(rho) z_0 + sqrt(1 - rho) e_k``, where ``z_0`` and ``e_k`` are standard normals
hashed from the prompt (and the model id). ``rho`` (the table's ``copula_rho``) is the
Gaussian-copula correlation fitted to the recorded scores' Spearman correlation between
models, so a prompt that scores low on the light model tends to score low on the heavy one,
as in the reference.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from planner.reference import (
    IMAGES_PER_PROMPT,
    QUALITY_COLUMN,
    ReferenceDataError,
    read_model_scores,
    read_prompts,
    reference_dir,
)
from workers.backends import Backend, BackendError, BatchTooLargeError, Generation

if TYPE_CHECKING:
    from PIL import Image

    from planner.registry import ModelSpec

QUANTILES_FORMAT = "hadis-score-quantiles/1"
DEFAULT_LEVELS = 201
PROFILE_NAME = "profile-sd35"
PROMPTS_NAME = "imagenet1k_captions_5k.txt"
PACKAGE_DATA = Path(__file__).resolve().parents[2] / "hadis_celery" / "data"
# Tried in order when ../shared is absent: a quantiles table, then the packaged profile table.
PACKAGED_SOURCES = (PACKAGE_DATA / "score_quantiles_sd35.json", PACKAGE_DATA / "profile_sd35.json")
DEFAULT_RHO = 0.40  # copula_rho fitted on the reference scores (0.401), for tables without one
_NORMAL = NormalDist()


class ScoreSourceError(BackendError):
    """The replay score source (reference folder or quantiles JSON) is missing or malformed."""


def _unit_hash(*parts: object) -> float:
    """A uniform number in (0, 1), fixed by ``parts`` (stable across processes and runs)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    uniq, inverse = np.unique(x, return_inverse=True)
    if len(uniq) < len(x):  # ties share their mean rank
        ranks = np.bincount(inverse, ranks) / np.bincount(inverse)
        ranks = ranks[inverse]
    return ranks


def copula_rho(scores: Mapping[int, np.ndarray]) -> float:
    """Gaussian-copula correlation matching the mean Spearman correlation between models."""
    keys = sorted(scores)
    ranks = [_average_ranks(np.asarray(scores[k])) for k in keys]
    pairs = [np.corrcoef(ranks[i], ranks[j])[0, 1]
             for i in range(len(keys)) for j in range(i + 1, len(keys))]
    if not pairs:
        return 0.0
    spearman = float(np.mean(pairs))
    return float(min(max(2.0 * math.sin(math.pi * spearman / 6.0), 0.0), 1.0))


@dataclass(frozen=True)
class ScoreTable:
    """Recorded quality scores per model: quantile functions, plus per-prompt records when
    built from the reference folder."""

    probs: np.ndarray
    quantiles: Mapping[int, np.ndarray]
    rho: float = 0.0
    recorded: Mapping[int, np.ndarray] = field(default_factory=dict)
    prompt_index: Mapping[str, int] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        p = np.asarray(self.probs, dtype=float)
        if p.ndim != 1 or len(p) < 2 or p[0] != 0.0 or p[-1] != 1.0 or np.any(np.diff(p) <= 0):
            raise ScoreSourceError(f"{self.source}: probs must rise strictly from 0 to 1")
        if not self.quantiles:
            raise ScoreSourceError(f"{self.source}: no models")
        for k, q in self.quantiles.items():
            q = np.asarray(q, dtype=float)
            if q.shape != p.shape or not np.all(np.isfinite(q)) or np.any(np.diff(q) < 0):
                raise ScoreSourceError(f"{self.source}: model {k}: quantiles must be "
                                       f"{len(p)} finite non-decreasing numbers")
            if q[0] < 0.0 or q[-1] > 1.0:
                raise ScoreSourceError(f"{self.source}: model {k}: scores outside [0, 1]")
        if not 0.0 <= self.rho <= 1.0:
            raise ScoreSourceError(f"{self.source}: copula_rho {self.rho} outside [0, 1]")

    @property
    def models(self) -> list[int]:
        return sorted(self.quantiles)

    def is_reference(self, prompt: str) -> bool:
        return prompt.strip() in self.prompt_index

    def recorded_score(self, model_id: int, prompt: str) -> float | None:
        """The reference score of a reference prompt (first line with that text), else None."""
        idx = self.prompt_index.get(prompt.strip())
        if idx is None or model_id not in self.recorded:
            return None
        return float(self.recorded[model_id][idx])

    def draw(self, model_id: int, prompt: str) -> float:
        """The deterministic draw for a prompt outside the reference set (see module doc)."""
        key = prompt.strip()
        z0 = _NORMAL.inv_cdf(_unit_hash("shared", key))
        zk = _NORMAL.inv_cdf(_unit_hash("model", model_id, key))
        u = _NORMAL.cdf(math.sqrt(self.rho) * z0 + math.sqrt(1.0 - self.rho) * zk)
        return float(np.interp(u, self.probs, self.quantiles[model_id]))

    def score(self, model_id: int, prompt: str) -> float:
        if model_id not in self.quantiles:
            raise ScoreSourceError(f"{self.source}: no recorded scores for model {model_id} "
                                   f"(has {self.models})")
        recorded = self.recorded_score(model_id, prompt)
        return recorded if recorded is not None else self.draw(model_id, prompt)

    def to_json(self) -> dict[str, Any]:
        """The compact quantiles table (format ``hadis-score-quantiles/1``)."""

        def r(x: float) -> float:
            return float(f"{x:.6g}")

        models = {}
        for k in self.models:
            entry: dict[str, Any] = {"quantiles": [r(v) for v in self.quantiles[k]]}
            if k in self.recorded:
                entry["mean"] = r(float(np.mean(self.recorded[k])))
                entry["n_prompts"] = len(self.recorded[k])
            models[str(k)] = entry
        return {
            "format": QUANTILES_FORMAT,
            "source": self.source,
            "quality": f"column {QUALITY_COLUMN} of scores_model_K.txt (P(real) of the "
                       f"artifact's CLIP+MLP discriminator), mean of {IMAGES_PER_PROMPT} images "
                       "per prompt",
            "probs": [r(v) for v in self.probs],
            "copula_rho": r(self.rho),
            "models": models,
        }

    @classmethod
    def from_scores(cls, scores: Mapping[int, np.ndarray], prompts: Sequence[str] = (),
                    levels: int = DEFAULT_LEVELS, source: str = "") -> ScoreTable:
        """From per-prompt scores (model -> array aligned with ``prompts`` when given)."""
        probs = np.linspace(0.0, 1.0, int(levels))
        quantiles = {int(k): np.quantile(np.asarray(v, dtype=float), probs)
                     for k, v in scores.items()}
        index: dict[str, int] = {}
        for i, p in enumerate(prompts):
            index.setdefault(p.strip(), i)
        recorded = {int(k): np.asarray(v, dtype=float) for k, v in scores.items()}
        if prompts:
            for k, v in recorded.items():
                if len(v) != len(prompts):
                    raise ScoreSourceError(f"{source}: model {k} has {len(v)} scores for "
                                           f"{len(prompts)} prompts")
        return cls(probs=probs, quantiles=quantiles, rho=copula_rho(recorded),
                   recorded=recorded, prompt_index=index, source=source)

    @classmethod
    def from_reference(cls, profile_dir: str | os.PathLike[str],
                       prompts_path: str | os.PathLike[str] | None = None,
                       levels: int = DEFAULT_LEVELS) -> ScoreTable:
        profile = Path(profile_dir)
        if prompts_path is None:
            prompts_path = profile.parent / "prompts" / PROMPTS_NAME
            if not Path(prompts_path).is_file():
                prompts_path = reference_dir() / "prompts" / PROMPTS_NAME
        try:
            prompts = read_prompts(prompts_path)
            scores = read_model_scores(profile, n_prompts=len(prompts))
        except ReferenceDataError as exc:
            raise ScoreSourceError(str(exc)) from exc
        return cls.from_scores(scores, prompts, levels, source=f"{profile} (recorded scores)")

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "") -> ScoreTable:
        """From a ``hadis-score-quantiles/1`` table, or from a profile table JSON (``hadis
        profile export``) through its ``score_quantiles`` (evenly spaced levels)."""
        if data.get("format") != QUANTILES_FORMAT and "score_quantiles" in data:
            meta = data.get("meta") or {}
            data = {"format": QUANTILES_FORMAT, "source": data.get("source") or source,
                    "copula_rho": meta.get("copula_rho", DEFAULT_RHO),
                    "models": {k: {"quantiles": q}
                               for k, q in dict(data["score_quantiles"]).items()}}
            n = {len(m["quantiles"]) for m in data["models"].values()}
            if len(n) != 1:
                raise ScoreSourceError(f"{source}: score_quantiles of unequal lengths")
            data["probs"] = np.linspace(0.0, 1.0, n.pop()).tolist()
        if data.get("format") != QUANTILES_FORMAT:
            raise ScoreSourceError(f"{source}: not a score-quantiles table (format "
                                   f"{data.get('format')!r}, expected {QUANTILES_FORMAT!r} or a "
                                   "profile table with score_quantiles)")
        try:
            probs = np.asarray(data["probs"], dtype=float)
            quantiles = {int(k): np.asarray(v["quantiles"], dtype=float)
                         for k, v in data["models"].items()}
            rho = float(data.get("copula_rho", DEFAULT_RHO))
        except (KeyError, TypeError, ValueError) as exc:
            raise ScoreSourceError(f"{source}: malformed score-quantiles table: {exc}") from exc
        return cls(probs=probs, quantiles=quantiles, rho=rho,
                   source=str(data.get("source") or source))


def write_score_quantiles(out: str | os.PathLike[str], profile_dir: str | os.PathLike[str],
                          levels: int = DEFAULT_LEVELS) -> dict[str, Any]:
    """Derive the compact quantiles table from a reference profile folder and write it."""
    data = ScoreTable.from_reference(profile_dir, levels=levels).to_json()
    data["source"] = (f"derived from {Path(profile_dir).name}/scores_model_K.txt of the "
                      "reference measurements (Tung-I/diffserve-2)")
    Path(out).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return data


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> ScoreTable:
    p = Path(path)
    if p.is_dir():
        return ScoreTable.from_reference(p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScoreSourceError(f"{p}: cannot read the score-quantiles JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ScoreSourceError(f"{p}: not a score-quantiles table")
    return ScoreTable.from_json(data, source=str(p))


def default_score_source() -> Path:
    """The reference profile when ``../shared`` is at hand, else the packaged tables."""
    profile = reference_dir() / PROFILE_NAME
    if profile.is_dir():
        return profile
    for candidate in PACKAGED_SOURCES:
        if candidate.is_file():
            return candidate
    raise ScoreSourceError(f"no replay score source: none of {profile}, "
                           f"{', '.join(map(str, PACKAGED_SOURCES))} exists (pass a profile "
                           "folder or a score-quantiles JSON)")


def load_score_table(source: str | os.PathLike[str] | None = None) -> ScoreTable:
    """A profile folder or a quantiles JSON (default: ``default_score_source()``), parsed
    once per process (re-read when the file changes)."""
    path = Path(source) if source is not None else default_score_source()
    if not path.exists():
        raise ScoreSourceError(f"replay score source {path} does not exist")
    path = path.resolve()
    return _load_cached(str(path), path.stat().st_mtime_ns)


def batch_seconds(spec: ModelSpec, batch: int) -> float:
    """``spec.batch_seconds``, refusing a batch above the profiled sizes as too large."""
    if batch > spec.batch_sizes[-1]:
        raise BatchTooLargeError(f"model {spec.name}: batch of {batch} is larger than the "
                                 f"largest profiled batch {spec.batch_sizes[-1]}")
    return spec.batch_seconds(batch)


STAND_IN_LABEL = "stand-in (replay backend)"
IMAGE_SIZE = 256  # pixels a side: big enough to read in the web form, small to write


def _wrap(draw: Any, text: str, font: Any, width: float, max_lines: int) -> list[str]:
    """``text`` broken into at most ``max_lines`` lines that fit ``width`` pixels."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        cand = f"{line} {word}" if line else word
        if line and draw.textlength(cand, font=font) > width:
            lines.append(line)
            line = word
            if len(lines) == max_lines:
                break
        else:
            line = cand
    else:
        if line:
            lines.append(line)
    if len(lines) == max_lines and " ".join(lines) != " ".join(text.split()):
        lines[-1] = lines[-1].rstrip(".,;: ") + "..."
    return lines


def placeholder_image(spec: ModelSpec, prompt: str, quality: float, seed: int,
                      size: int = IMAGE_SIZE) -> Image.Image:
    """The replay backend's image: a card that says it is a stand-in, not a generated
    picture, and names the model that would have made it, the replayed score and the
    prompt (so a person reading the web form or the gallery is never misled)."""
    from colorsys import hsv_to_rgb

    from PIL import Image, ImageDraw

    hue = (spec.id * 67) % 360
    rgb = tuple(int(255 * c) for c in hsv_to_rgb(hue / 360.0, 0.35, 0.95))
    img = Image.new("RGB", (size, size), rgb)
    draw = ImageDraw.Draw(img)
    small, big = _font(max(8, size // 22)), _font(max(9, size // 16))
    step_s, step_b = max(9, size // 18), max(10, size // 13)
    band = step_s + 6
    draw.rectangle((0, 0, size, band), fill=(30, 30, 30))
    draw.text((4, 3), STAND_IN_LABEL, fill=(255, 220, 80), font=small)
    y = band + 4
    for text in _wrap(draw, spec.name, big, size - 8, 2):
        draw.text((4, y), text, fill=(20, 20, 20), font=big)
        y += step_b
    for text in (f"score {quality:.3f}", f"seed {seed}"):
        draw.text((4, y), text, fill=(20, 20, 20), font=small)
        y += step_s
    y += 4
    room = max(0, (size - y - 4) // step_s)
    for text in _wrap(draw, prompt, small, size - 8, room):
        draw.text((4, y), text, fill=(60, 60, 60), font=small)
        y += step_s
    img.info["hadis_model"] = spec.name
    img.info["hadis_prompt"] = prompt[:200]
    img.info["hadis_stand_in"] = STAND_IN_LABEL
    return img


@functools.lru_cache(maxsize=8)
def _font(size: int = 11) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


class ReplayBackend(Backend):
    """Replays the reference profile for ``spec.id`` (see the module doc)."""

    name = "replay"

    def __init__(self, spec: ModelSpec, max_batch: int | None = None, time_factor: float = 1.0,
                 scores: ScoreTable | str | os.PathLike[str] | None = None,
                 image_size: int = IMAGE_SIZE, load_delay_s: float = 0.0) -> None:
        super().__init__(spec, max_batch)
        try:
            factor = float(time_factor)
        except (TypeError, ValueError) as exc:
            raise BackendError(f"time_factor must be a number, got {time_factor!r}") from exc
        if not (factor >= 0 and math.isfinite(factor)):
            raise BackendError(f"time_factor must be a finite number >= 0, got {time_factor!r}")
        if not 16 <= int(image_size) <= 1024:
            raise BackendError(f"image_size must be between 16 and 1024, got {image_size!r}")
        if not (float(load_delay_s) >= 0 and math.isfinite(float(load_delay_s))):
            raise BackendError(f"load_delay_s must be a finite number >= 0, got {load_delay_s!r}")
        self.time_factor = factor
        self.load_delay_s = float(load_delay_s)  # profile seconds; slept x time_factor
        self.image_size = int(image_size)
        self._source = scores
        self.table: ScoreTable | None = None

    @property
    def loaded(self) -> bool:
        return self.table is not None

    def load(self) -> None:
        if self.table is not None:
            return
        table = self._source if isinstance(self._source, ScoreTable) else load_score_table(
            self._source)
        if self.spec.id not in table.quantiles:
            raise ScoreSourceError(f"model {self.spec.name} (id {self.spec.id}): {table.source} "
                                   f"has scores for models {table.models} only")
        if self.load_delay_s > 0:  # a model swap: weights would be loading now
            time.sleep(self.load_delay_s * self.time_factor)
        self.table = table

    def unload(self) -> None:
        self.table = None

    def warmup(self) -> None:
        placeholder_image(self.spec, "warm-up", 0.0, 0, self.image_size)  # loads the fonts

    def expected_seconds(self, batch: int) -> float:
        """What a batch of this size sleeps: profiled latency times the time factor."""
        return batch_seconds(self.spec, batch) * self.time_factor

    def _generate(self, prompts: list[str], seeds: list[int]) -> Generation:
        assert self.table is not None
        start = time.perf_counter()
        target = self.expected_seconds(len(prompts))
        quality = [self.table.score(self.spec.id, p) for p in prompts]
        images = [placeholder_image(self.spec, p, q, s, self.image_size)
                  for p, q, s in zip(prompts, quality, seeds, strict=True)]
        remaining = target - (time.perf_counter() - start)
        if remaining > 0:
            time.sleep(remaining)
        return Generation(images=images, seconds=time.perf_counter() - start, quality=quality)
