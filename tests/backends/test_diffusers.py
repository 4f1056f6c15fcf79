"""The tiny and diffusers backends (one code path): sizes, seeds, unload, bad configuration."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
import torch

from workers.backends import BackendError, BatchTooLargeError, load_backend
from workers.backends.pipeline import DiffusersBackend
from workers.backends.tiny import TinyBackend
from workers.errors import DeviceError


def arr(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_tiny_batch_has_the_configured_size(tiny_backend):
    gen = tiny_backend.generate(["a red ball", "a sailing boat", "a cat", "a dog"], [1, 2, 3, 4])
    assert len(gen.images) == 4 and gen.quality is None and gen.seconds > 0
    for img in gen.images:
        assert img.size == (64, 64) and img.mode == "RGB"
    # four different seeds: four different images
    flat = [arr(i).tobytes() for i in gen.images]
    assert len(set(flat)) == 4


def test_other_resolution(make_spec):
    backend = load_backend(make_spec(resolution=48, steps=1))
    assert backend.generate(["a"], [0]).images[0].size == (48, 48)


def test_same_seed_same_image(tiny_backend, make_spec):
    a = tiny_backend.generate(["a cat", "a dog"], [7, 8]).images
    b = tiny_backend.generate(["a cat", "a dog"], [7, 8]).images
    assert all(np.array_equal(arr(x), arr(y)) for x, y in zip(a, b, strict=True))
    # the seed, not the batch position, fixes the image
    c = tiny_backend.generate(["a dog", "a cat"], [8, 7]).images
    assert np.abs(arr(c[1]) - arr(a[0])).max() <= 2
    # a new process-equivalent: a freshly built tiny model with the same weights seed
    fresh = load_backend(make_spec())
    d = fresh.generate(["a cat"], [7]).images[0]
    assert np.abs(arr(d) - arr(a[0])).max() <= 2
    other = tiny_backend.generate(["a cat"], [9]).images[0]
    assert np.abs(arr(other) - arr(a[0])).mean() > 5


def test_unload_frees_the_model(make_spec):
    backend = load_backend(make_spec(steps=1))
    backend.warmup()
    assert backend.memory_bytes() > 100_000
    unet = weakref.ref(backend.pipeline.unet)
    vae = weakref.ref(backend.pipeline.vae)
    backend.unload()
    gc.collect()
    assert unet() is None and vae() is None, "pipeline components still referenced"
    assert backend.memory_bytes() == 0 and not backend.loaded
    with pytest.raises(BackendError, match="not loaded"):
        backend.generate(["a"], [0])
    backend.load()
    assert backend.generate(["a"], [0]).images[0].size == (64, 64)


def test_batch_larger_than_configured(tiny_backend, make_spec):
    with pytest.raises(BatchTooLargeError, match="larger than the configured maximum 8"):
        tiny_backend.generate(["a"] * 9, list(range(9)))
    with pytest.raises(BatchTooLargeError):
        load_backend(make_spec(), max_batch=16)
    with pytest.raises(BackendError, match="2 prompts but 1 seeds"):
        tiny_backend.generate(["a", "b"], [1])


def test_cuda_asked_for_but_absent(make_spec):
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    backend = TinyBackend(make_spec(), device=device)
    with pytest.raises(DeviceError, match="CUDA is not available|GPU"):
        backend.load()
    assert not backend.loaded
    with pytest.raises(DeviceError, match="fp16 needs a CUDA device"):
        load_backend(make_spec(), device="cpu", dtype="fp16")
    with pytest.raises(DeviceError, match="unknown device"):
        load_backend(make_spec(), device="tpu")


def test_resolution_must_be_a_multiple_of_8(make_spec):
    with pytest.raises(BackendError, match="multiple of 8"):
        load_backend(make_spec(resolution=60))


def test_diffusers_backend_loads_a_local_pipeline(tmp_path, tiny_backend, make_spec):
    folder = tmp_path / "tiny-sd"
    tiny_backend.pipeline.save_pretrained(folder)
    backend = load_backend(make_spec(backend="diffusers", path=str(folder)), device="cpu",
                           guidance_scale=0.0)
    assert isinstance(backend, DiffusersBackend) and not isinstance(backend, TinyBackend)
    got = backend.generate(["a cat", "a dog"], [7, 8]).images
    want = tiny_backend.generate(["a cat", "a dog"], [7, 8]).images
    for g, w in zip(got, want, strict=True):
        assert g.size == (64, 64)
        assert np.abs(arr(g) - arr(w)).max() <= 2


def test_diffusers_backend_bad_paths(tmp_path, make_spec):
    def load(path):
        return load_backend(make_spec(backend="diffusers", path=path), device="cpu")

    with pytest.raises(BackendError, match="needs a weights path"):
        load(None)
    with pytest.raises(BackendError, match="does not exist"):
        load(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackendError, match="not a diffusers pipeline folder"):
        load(str(empty))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(BackendError, match="not a diffusers pipeline folder"):
        load(str(weights))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(BackendError, match="cannot load the pipeline") as info:
        load(str(broken))
    assert "\n" not in str(info.value)
