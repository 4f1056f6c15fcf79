"""The replay backend: recorded scores for reference prompts, deterministic draws from the
recorded distribution for others, profiled latency times the time factor."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hadis_celery.examples import sd35_registry
from planner.registry import ModelSpec
from workers.backends import BatchTooLargeError, Generation, load_backend
from workers.backends.replay import (
    QUANTILES_FORMAT,
    ScoreSourceError,
    ScoreTable,
    batch_seconds,
    load_score_table,
    write_score_quantiles,
)

REG = sd35_registry()


@functools.lru_cache(maxsize=8)
def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def raw_score(reference, model: int, prompt_index: int) -> float:
    """Column 1 of lines 4p..4p+3 of scores_model_K.txt, averaged: read here independently."""
    lines = _lines(reference / "profile-sd35" / f"scores_model_{model}.txt")
    return float(np.mean([float(lines[4 * prompt_index + i].split()[1]) for i in range(4)]))


@pytest.fixture(scope="module")
def prompts(reference) -> list[str]:
    path = reference / "prompts" / "imagenet1k_captions_5k.txt"
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def quantiles_json(tmp_path_factory, reference):
    out = tmp_path_factory.mktemp("q") / "score_quantiles.json"
    write_score_quantiles(out, reference / "profile-sd35")
    return out


def test_reference_prompts_get_their_recorded_score(reference, prompts):
    idx = [0, 1, 2, 999, 4321]
    for model in (0, 3):
        backend = load_backend(REG.get(model), time_factor=0.0)
        gen = backend.generate([prompts[i] for i in idx], [0] * len(idx))
        assert isinstance(gen, Generation)
        expected = [raw_score(reference, model, i) for i in idx]
        assert gen.quality == pytest.approx(expected, rel=1e-12, abs=0)
        assert len(gen.images) == len(idx)


def test_duplicate_reference_prompt_uses_its_first_line(reference, prompts):
    first: dict[str, int] = {}
    for i, p in enumerate(prompts):
        if p in first and raw_score(reference, 0, i) != raw_score(reference, 0, first[p]):
            dup, orig = i, first[p]
            break
        first.setdefault(p, i)
    table = load_score_table(reference / "profile-sd35")
    assert table.score(0, prompts[dup]) == pytest.approx(raw_score(reference, 0, orig))


def test_other_prompts_draw_deterministically_from_the_recorded_distribution(reference):
    table = load_score_table(reference / "profile-sd35")
    others = [f"a purple dragon number {i} eating ramen" for i in range(3000)]
    assert not any(table.is_reference(p) for p in others)
    for model in table.models:
        draws = np.array([table.score(model, p) for p in others])
        again = np.array([table.score(model, p) for p in others])
        assert np.array_equal(draws, again)
        recorded = np.sort(table.recorded[model])
        # Kolmogorov-Smirnov distance between the draws and the recorded scores
        grid = np.quantile(recorded, np.linspace(0, 1, 101))
        ecdf_rec = np.searchsorted(recorded, grid, side="right") / len(recorded)
        ecdf_draw = np.searchsorted(np.sort(draws), grid, side="right") / len(draws)
        assert np.max(np.abs(ecdf_rec - ecdf_draw)) < 0.05
        assert recorded[0] <= draws.min() and draws.max() <= recorded[-1]
    # the light and heavy model's draws are correlated as in the reference (rho about 0.4)
    light = np.array([table.score(0, p) for p in others])
    heavy = np.array([table.score(3, p) for p in others])
    rank = np.corrcoef(np.argsort(np.argsort(light)), np.argsort(np.argsort(heavy)))[0, 1]
    assert 0.2 < rank < 0.6


def test_time_factor_scales_the_profiled_batch_latency():
    spec = REG.get(3)  # 27 s at batch 1
    for factor, batch in ((0.01, 1), (0.01, 2), (0.005, 4)):
        backend = load_backend(spec, time_factor=factor)
        expected = spec.batch_latency(batch) * factor
        assert backend.expected_seconds(batch) == pytest.approx(expected)
        gen = backend.generate(["a cat"] * batch, list(range(batch)))
        # at least the scaled time; the upper bound only tells scaled from unscaled (27 s
        # and more), with room for a loaded machine
        assert expected <= gen.seconds < expected + 5.0
    fast = load_backend(spec, time_factor=0.0)
    assert fast.expected_seconds(4) == 0.0
    assert fast.generate(["a cat"] * 4, [0, 1, 2, 3]).seconds < 5.0


def test_partial_batches_interpolate_between_profiled_sizes():
    spec = REG.get(1)
    assert batch_seconds(spec, 3) == pytest.approx(
        (spec.batch_latency(2) + spec.batch_latency(4)) / 2)
    assert batch_seconds(spec, 16) == spec.batch_latency(16)
    with pytest.raises(BatchTooLargeError):
        batch_seconds(spec, 17)


def test_batch_larger_than_configured_is_refused():
    backend = load_backend(REG.get(0), time_factor=0.0, max_batch=4)
    with pytest.raises(BatchTooLargeError, match="larger than the configured maximum 4"):
        backend.generate(["a"] * 5, list(range(5)))
    with pytest.raises(BatchTooLargeError, match="larger than the configured maximum 16"):
        load_backend(REG.get(0), max_batch=32)


def test_placeholder_image_names_its_model():
    gens = [load_backend(REG.get(m), time_factor=0.0).generate(["a cat"], [5]) for m in (0, 3)]
    a, b = gens[0].images[0], gens[1].images[0]
    assert a.info["hadis_model"] == "SDXL-Lightning" and b.info["hadis_model"] == "SD3.5-Large"
    assert a.size == (256, 256) and a.mode == "RGB"
    assert a.info["hadis_stand_in"] == "stand-in (replay backend)"
    assert np.asarray(a).std() > 0  # text drawn on it
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_quantiles_json_replaces_the_reference(quantiles_json, reference, tmp_path, monkeypatch):
    data = json.loads(quantiles_json.read_text())
    assert data["format"] == QUANTILES_FORMAT and set(data["models"]) == {"0", "1", "2", "3"}
    assert 0.2 < data["copula_rho"] < 0.6
    full = load_score_table(reference / "profile-sd35")
    monkeypatch.setenv("HADIS_REFERENCE_DIR", str(tmp_path / "absent"))
    compact = load_score_table(quantiles_json)
    assert compact.recorded == {} and compact.models == [0, 1, 2, 3]
    backend = load_backend(REG.get(2), time_factor=0.0, scores=quantiles_json)
    prompts = [f"an unseen prompt {i}" for i in range(50)]
    got = backend.generate(prompts[:8], list(range(8))).quality
    assert got == pytest.approx([full.score(2, p) for p in prompts[:8]], rel=1e-4, abs=1e-9)
    # reference prompts are drawn too without the reference: same distribution, no record
    assert compact.recorded_score(2, "a white handkerchief with embroidered star on it") is None


def test_profile_table_json_is_a_score_source(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"format": 1, "name": "x",
                                "score_quantiles": {"0": list(np.linspace(0, 0.5, 11)),
                                                    "3": list(np.linspace(0, 0.9, 11))}}))
    table = load_score_table(path)
    assert table.models == [0, 3]
    assert 0.0 <= table.score(3, "anything") <= 0.9


def test_score_table_is_cached(reference):
    a = load_score_table(reference / "profile-sd35")
    b = load_score_table(str(reference / "profile-sd35"))
    assert a is b


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("{not json", "cannot read"),
    ('{"format": "other"}', "not a score-quantiles table"),
    ('{"format": "hadis-score-quantiles/1", "probs": [0, 1], "models": {"0": {"quantiles": '
     '[0.5, 0.1]}}}', "non-decreasing"),
])
def test_bad_score_sources_fail_at_load(tmp_path, content, match):
    path = tmp_path / "q.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ScoreSourceError, match=match):
        load_backend(REG.get(0), scores=path)


def test_model_without_recorded_scores_fails_at_load(quantiles_json):
    spec = ModelSpec(id=9, name="unknown", queue="u", latency={1: 1.0})
    with pytest.raises(ScoreSourceError, match="has scores for models"):
        load_backend(spec, scores=quantiles_json)


def test_bad_time_factor_and_unknown_backend():
    with pytest.raises(ValueError, match="time_factor"):
        load_backend(REG.get(0), time_factor=-1)
    spec = ModelSpec(id=0, name="x", queue="x", backend="onnx", latency={1: 1.0})
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        load_backend(spec)


def test_score_table_from_scores_checks_alignment():
    with pytest.raises(ScoreSourceError, match="3 scores for 2 prompts"):
        ScoreTable.from_scores({0: np.array([0.1, 0.2, 0.3])}, ["a", "b"])


def test_replay_worker_does_not_import_torch():
    code = ("import sys, workers.backends.replay as r; from hadis_celery.examples import "
            "sd35_registry; from workers.backends import load_backend; "
            "b = load_backend(sd35_registry().get(0), time_factor=0.0); "
            "b.generate(['a cat'], [0]); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
