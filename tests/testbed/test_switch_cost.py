"""The switch-cost check reaches both sides of the testbed: the live beat builds HADIS with
it unless ``HADIS_SWITCH_COST`` turns it off (and records it with each plan, so ``hadis plan
replay`` rebuilds the same planner), and the bench refuses it for another planner before
starting anything."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench import testbed
from hadis_celery.beat import planner_options
from hadis_celery.settings import Settings
from planner.baselines import make_planner


@pytest.mark.parametrize("env, on", [("1", True), ("0", False), ("", True), ("off", False),
                                     ("True", True)])
def test_the_beat_builds_hadis_with_the_switch_check_unless_turned_off(monkeypatch, env, on):
    monkeypatch.setenv("HADIS_SWITCH_COST", env)
    s = replace(Settings(), planner="hadis", swap_delay_s=7.0)
    options = planner_options(s)
    planner = make_planner("hadis", solver="highs", **options)
    assert planner.switch_cost is on
    if on:
        assert planner.swap_delay_s == 7.0


def test_a_malformed_setting_is_named(monkeypatch):
    monkeypatch.setenv("HADIS_SWITCH_COST", "maybe")
    with pytest.raises(ValueError, match="HADIS_SWITCH_COST='maybe': not a yes/no value"):
        Settings()


def test_the_settings_pass_the_check_to_child_processes(monkeypatch):
    monkeypatch.setenv("HADIS_SWITCH_COST", "0")
    env = Settings().to_env()
    assert env["HADIS_SWITCH_COST"] == "False"
    monkeypatch.setenv("HADIS_SWITCH_COST", env["HADIS_SWITCH_COST"])
    assert Settings().switch_cost is False


def test_another_planner_ignores_the_setting(monkeypatch):
    monkeypatch.setenv("HADIS_SWITCH_COST", "1")
    assert "switch_cost" not in planner_options(replace(Settings(), planner="proteus"))


def test_the_bench_refuses_the_check_for_another_planner(capsys):
    with pytest.raises(SystemExit) as exc:
        testbed.main(["--switch-cost", "--planner", "proteus"])
    assert exc.value.code == 2
    assert "--switch-cost is an option of the hadis planner" in capsys.readouterr().err


def test_the_cli_names_a_malformed_setting_in_one_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from hadis_celery.cli import main

    monkeypatch.setenv("HADIS_SWITCH_COST", "maybe")
    res = CliRunner().invoke(main, ["up", "--port", "0", "--no-flower",
                                    "--logs", str(tmp_path / "log")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert res.output.strip() == ("Error: HADIS_SWITCH_COST='maybe': not a yes/no value "
                                  "(1/0, true/false, yes/no, on/off)")
