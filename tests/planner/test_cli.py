"""``hadis plan``: the click command, called in process."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hadis_celery.commands.plan import command
from planner.plan import Plan

BASE = ["--profile", "sd35", "--workers", "16", "--slo", "60"]


@pytest.fixture(autouse=True)
def empty_database(tmp_path, monkeypatch):
    """An empty SQLite database: ``sd35`` then means the reference measurements."""
    monkeypatch.setenv("HADIS_DATABASE_URL", f"sqlite:///{tmp_path / 'hadis.sqlite'}")


@pytest.mark.parametrize("solver", ["gurobi", "highs"])
def test_plan_json(reference, solver):
    res = CliRunner().invoke(command, [*BASE, "--demand", "12", "--solver", solver, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout.strip().splitlines()[-1])
    assert d["solver"] == solver and d["planner"] == "hadis"
    assert d["profile"].startswith(("packaged", "reference"))
    plan = Plan.from_dict(d)
    assert plan.total_workers == 16 and not plan.overloaded and plan.fid < 29.75


def test_plan_text_and_baseline(reference):
    res = CliRunner().invoke(command, [*BASE, "--demand", "4", "--planner", "diffserve",
                                       "--queue", "light_sd35_large_turbo=10@2"])
    assert res.exit_code == 0, res.output
    assert "SD3.5-Large-Turbo -> SD3.5-Large" in res.stdout
    assert "sheds at arrival" not in res.stdout


def test_plan_says_when_the_front_door_will_shed(reference):
    res = CliRunner().invoke(command, [*BASE, "--demand", "4", "--planner", "hadis-plus-ac"])
    assert res.exit_code == 0, res.output
    assert "admission sheds at arrival" in res.stdout and "over_capacity" in res.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--demand", "nan"], "demand"),
    (["--demand", "-3"], "demand"),
    (["--demand", "inf"], "demand"),
    (["--demand", "3", "--workers", "0"], "at least 1 worker"),
    (["--demand", "3", "--slo", "0.2"], "below the fastest"),
    (["--demand", "3", "--queue", "nowhere=3"], "no model"),
    (["--demand", "3", "--queue", "light_sdxl=x"], "QUEUE=LENGTH"),
])
def test_bad_input_exits_with_one_line(reference, args, message):
    res = CliRunner().invoke(command, [*BASE, *args])
    assert res.exit_code in (1, 2)
    assert message in res.output and "Traceback" not in res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)


def test_unknown_profile(reference):
    res = CliRunner().invoke(command, ["--profile", "nosuch", "--demand", "1",
                                       "--workers", "2"])
    assert res.exit_code == 1 and "no profile 'nosuch'" in res.output


def test_plan_reads_a_stored_profile(reference, tmp_path):
    from hadis_celery.commands.profile import command as profile_command

    url = f"sqlite:///{tmp_path / 'stored.sqlite'}"
    res = CliRunner().invoke(profile_command, ["import", str(reference / "profile-sd35"),
                                               "--name", "sd35", "--no-router", "--url", url])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(command, [*BASE, "--demand", "12", "--url", url, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout.strip().splitlines()[-1])
    assert d["profile"] == "SQL profile sd35 v1"
    ref = CliRunner().invoke(command, ["--profile", str(reference / "profile-sd35"), *BASE[2:],
                                       "--demand", "12", "--json"])
    r = json.loads(ref.stdout.strip().splitlines()[-1])
    assert r["profile"].startswith("folder")
    assert d["fid"] == r["fid"] and d["workers"] == r["workers"] and d["batch"] == r["batch"]


def test_packaged_pareto_table_plans_like_the_full_reference(reference):
    """The packaged table keeps the Pareto rows only; the plans must not change."""
    for demand in ("1", "6", "12", "24"):
        a = CliRunner().invoke(command, [*BASE, "--demand", demand, "--json"])
        b = CliRunner().invoke(command, ["--profile", str(reference / "profile-sd35"),
                                         *BASE[2:], "--demand", demand, "--json"])
        da, db = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (a, b))
        assert da["fid"] == db["fid"] and da["pair"] == db["pair"], demand
