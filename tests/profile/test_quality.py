"""FID and CLIP score through ``workers.quality`` (torchmetrics underneath) on images of a
tiny diffusers pipeline and a small random-weight feature network saved as TorchScript,
loaded the way the real Inception file is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from planner.registry import ModelSpec, PipelineSettings
from tests.profile.tiny_assets import FEATURES, save_feature_net, save_tiny_clip, smooth_images
from workers.backends import load_backend
from workers.quality import (
    INCEPTION_URL,
    ClipScorer,
    FidScorer,
    MetricSetupError,
    load_feature_extractor,
    reference_images,
)


@pytest.fixture(scope="module")
def tiny_images():
    spec = ModelSpec(id=0, name="tiny", queue="t", backend="tiny", steps=1, resolution=32,
                     latency={1: 0.1, 16: 1.0}, pipeline=PipelineSettings(dtype="fp32"))
    be = load_backend(spec)
    gen = be.generate([f"a picture number {i}" for i in range(16)], list(range(16)))
    be.unload()
    return gen.images


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return load_feature_extractor(save_feature_net(tmp_path_factory.mktemp("fe") / "f.pt"))


def _noisy(images, sigma, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(np.clip(np.asarray(im, float) + rng.normal(0, sigma, (32, 32, 3)),
                                    0, 255).astype(np.uint8)) for im in images]


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(tiny_images, features):
    real = features(tiny_images)
    assert real.shape == (16, FEATURES)
    scorer = FidScorer(real)
    assert abs(scorer(real)) < 1e-6
    fids = [scorer(features(_noisy(tiny_images, s))) for s in (8, 32, 96)]
    assert 0 < fids[0] < fids[1] < fids[2], fids


def test_the_library_fid_equals_an_independent_frechet_distance():
    rng = np.random.default_rng(5)
    d = 6
    a = rng.normal(0, 1, (400, d))
    b = rng.normal(0.3, 1.5, (300, d)) @ rng.normal(0, 0.6, (d, d)) + 0.2 * rng.normal(
        0, 1, (300, d))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert expected > 1
    assert FidScorer(a)(b) == pytest.approx(expected, rel=1e-6)


def test_clip_score_per_image_is_the_clamped_cosine_times_100(tmp_path):
    folder = save_tiny_clip(tmp_path / "clip")
    scorer = ClipScorer(folder)
    images = smooth_images(4, seed=1)
    prompts = ["a red apple", "a small boat", "a dog on grass", "a blue car"]
    got = scorer(images, prompts)
    model, proc = scorer.model.clip, scorer.processor
    with torch.inference_mode():
        img = model.get_image_features(**proc(images=images, return_tensors="pt")).pooler_output
        txt = model.get_text_features(**proc(text=prompts, return_tensors="pt",
                                             padding=True)).pooler_output
    cos = torch.nn.functional.cosine_similarity(img, txt).numpy()
    assert got == pytest.approx(np.maximum(100 * cos, 0), abs=1e-3)
    assert (got > 0).any() and (got == 0).any()  # seed 0: one positive, others clamped


def test_missing_files_are_named_with_how_to_get_them(tmp_path):
    with pytest.raises(MetricSetupError, match=f"{tmp_path}/none.pt not found.*{INCEPTION_URL}"):
        load_feature_extractor(tmp_path / "none.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pth")
    with pytest.raises(MetricSetupError, match="not a TorchScript file.*torch-fidelity"):
        load_feature_extractor(tmp_path / "weights.pth")
    with pytest.raises(MetricSetupError, match=f"CLIP folder {tmp_path}/clip not found.*"
                                               "save_pretrained"):
        ClipScorer(tmp_path / "clip")
    (tmp_path / "refs").mkdir()
    smooth_images(1, seed=0)[0].save(tmp_path / "refs" / "one.png")
    with pytest.raises(MetricSetupError, match="1 images .* FID needs at least 2"):
        reference_images(tmp_path / "refs")
    with pytest.raises(MetricSetupError, match="at least 2 reference images"):
        FidScorer(np.zeros((1, 3)))
