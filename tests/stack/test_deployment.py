"""Queue topology, delivery settings and registry overrides of the Celery app."""

from __future__ import annotations

import pytest

from hadis_celery.celery import longest_batch_s, make_app, visibility_timeout_s
from hadis_celery.deployment import CONTROL_QUEUE, load_table, parse_model_paths
from hadis_celery.settings import Settings


def test_queues_late_acks_prefetch_and_visibility_timeout():
    s = Settings(broker_url="redis://127.0.0.1:6379/5")
    app = make_app(s)
    names = {q.name for q in app.conf.task_queues}
    reg = load_table(s).registry
    assert names == {f"{r}_{m.queue}" for m in reg for r in ("light", "heavy")} | {CONTROL_QUEUE}
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    vt = app.conf.broker_transport_options["visibility_timeout"]
    assert vt > longest_batch_s(reg) and vt == visibility_timeout_s(reg)
    assert longest_batch_s(reg) == pytest.approx(27.0 * (0.2 + 0.8 * 16))
    assert app.conf.beat_schedule["hadis-plan"]["schedule"] == s.plan_period_s


def test_backend_and_model_paths_override_the_registry(tmp_path):
    for name in ("sdxl", "t", "m", "l"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text("{}")
    paths = ",".join(f"{q}={tmp_path / n}" for q, n in (
        ("sdxl", "sdxl"), ("sd35_large_turbo", "t"), ("sd35_medium", "m"), ("sd35_large", "l")))
    reg = load_table(Settings(backend="diffusers", model_paths=paths)).registry
    assert {m.backend for m in reg} == {"diffusers"}
    assert reg.get(0).path == str(tmp_path / "sdxl") and reg.get(3).path == str(tmp_path / "l")
    # a model left without weights is refused, naming it and the fix (issue 14)
    with pytest.raises(ValueError, match=r"models\[1\] \(SD3.5-Large-Turbo\): the diffusers "
                                         "backend needs a weights path"):
        load_table(Settings(backend="diffusers", model_paths=f"sdxl={tmp_path / 'sdxl'}"))
    with pytest.raises(ValueError, match="unknown models"):
        load_table(Settings(model_paths="nope=/x"))
    with pytest.raises(ValueError, match="queue=path"):
        parse_model_paths("sdxl")
