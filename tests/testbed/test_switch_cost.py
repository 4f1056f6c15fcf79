"""The switch-cost check reaches both sides of the testbed: the live beat builds HADIS with
it when ``HADIS_SWITCH_COST`` says so (and records it with each plan, so ``hadis plan
replay`` rebuilds the same planner), and the bench refuses it for another planner before
starting anything."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench import testbed
from hadis_celery.beat import planner_options
from hadis_celery.settings import Settings
from planner.baselines import make_planner


@pytest.mark.parametrize("env, on", [("1", True), ("0", False), ("", False)])
def test_the_beat_builds_hadis_with_the_switch_check_only_when_asked(monkeypatch, env, on):
    monkeypatch.setenv("HADIS_SWITCH_COST", env)
    s = replace(Settings(), planner="hadis", swap_delay_s=7.0)
    options = planner_options(s)
    planner = make_planner("hadis", solver="highs", **options)
    assert planner.switch_cost is on
    if on:
        assert planner.swap_delay_s == 7.0


def test_another_planner_ignores_the_setting(monkeypatch):
    monkeypatch.setenv("HADIS_SWITCH_COST", "1")
    assert "switch_cost" not in planner_options(replace(Settings(), planner="proteus"))


def test_the_bench_refuses_the_check_for_another_planner(capsys):
    with pytest.raises(SystemExit) as exc:
        testbed.main(["--switch-cost", "--planner", "proteus"])
    assert exc.value.code == 2
    assert "--switch-cost is an option of the hadis planner" in capsys.readouterr().err
