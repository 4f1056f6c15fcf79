"""Bad input to ``hadis replay`` and the testbed's ``hadis up`` options: one clear line on the
command line, never a traceback, nothing started."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest
from click.testing import CliRunner

from hadis_celery.cli import main
from hadis_celery.commands.up import child_env
from hadis_celery.settings import Settings
from tests.testbed.conftest import write_trace


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


def _fails(args: list[str]) -> str:
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    return res.output


@pytest.fixture
def files(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na small boat\na cup of coffee\n")
    return tmp_path, write_trace(tmp_path / "trace.txt", [(0, 0), (50, 2)]), prompts


def test_missing_trace_file(files):
    tmp, _, prompts = files
    out = _fails(["replay", "--trace", str(tmp / "nope.txt"), "--prompts", str(prompts)])
    assert "nope.txt: no such trace file" in out


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://127.0.0.1/", "http://", "http://h:x"])
def test_bad_url(files, url):
    _, trace, prompts = files
    out = _fails(["replay", "--trace", str(trace), "--prompts", str(prompts), "--url", url])
    assert "Invalid value for --url" in out


def test_unreachable_front_door(files):
    _, trace, prompts = files
    port = _closed_port()
    out = _fails(["replay", "--trace", str(trace), "--prompts", str(prompts),
                  "--url", f"http://127.0.0.1:{port}"])
    assert f"cannot reach the front door at http://127.0.0.1:{port}" in out


@pytest.mark.parametrize("scale", ["0", "-1", "abc"])
def test_non_positive_time_scale(files, scale):
    _, trace, prompts = files
    out = _fails(["replay", "--trace", str(trace), "--prompts", str(prompts),
                  "--time-scale", scale])
    assert "Invalid value for '--time-scale'" in out


def test_prompt_index_out_of_range(files):
    tmp, _, prompts = files
    trace = write_trace(tmp / "far.txt", [(0, 0), (10, 3)])
    out = _fails(["replay", "--trace", str(trace), "--prompts", str(prompts)])
    assert "far.txt:2: prompt index 3 >= 3 prompts" in out


def test_malformed_trace_and_missing_prompts_and_empty_slice(files):
    tmp, trace, prompts = files
    bad = tmp / "bad.txt"
    bad.write_text("0,1\nzero,2\n")
    assert "bad.txt:2: not numbers" in _fails(
        ["replay", "--trace", str(bad), "--prompts", str(prompts)])
    assert "no such prompt file" in _fails(
        ["replay", "--trace", str(trace), "--prompts", str(tmp / "none.txt")])
    assert "no arrivals from 10 s" in _fails(
        ["replay", "--trace", str(trace), "--prompts", str(prompts), "--start", "10"])


def test_up_refuses_an_unknown_planner_before_starting_anything():
    out = _fails(["up", "--planner", "nonsense", "--no-flower"])
    assert "Invalid value for --planner: unknown planner 'nonsense'" in out and "hadis" in out


def test_up_hands_its_settings_to_every_child():
    s = replace(Settings(), slo_s=120.0, planner="proteus", solver="highs",
                demand_half_life_s=20.0, swap_delay_s=5.0, rate_limit_per_min=0,
                worker_budget=16, profile="/tmp/table.json", plan_period_s=10.0,
                time_factor=2.0, database_url="sqlite:////tmp/x.sqlite")
    env = child_env(s)
    assert {k: env[k] for k in ("HADIS_SLO_S", "HADIS_PLANNER", "HADIS_SOLVER",
                                "HADIS_DEMAND_HALF_LIFE_S", "HADIS_SWAP_DELAY_S",
                                "HADIS_RATE_LIMIT_PER_MIN", "HADIS_WORKERS", "HADIS_PROFILE",
                                "HADIS_PLAN_PERIOD_S", "HADIS_TIME_FACTOR",
                                "HADIS_DATABASE_URL")} == {
        "HADIS_SLO_S": "120.0", "HADIS_PLANNER": "proteus", "HADIS_SOLVER": "highs",
        "HADIS_DEMAND_HALF_LIFE_S": "20.0", "HADIS_SWAP_DELAY_S": "5.0",
        "HADIS_RATE_LIMIT_PER_MIN": "0", "HADIS_WORKERS": "16",
        "HADIS_PROFILE": "/tmp/table.json", "HADIS_PLAN_PERIOD_S": "10.0",
        "HADIS_TIME_FACTOR": "2.0", "HADIS_DATABASE_URL": "sqlite:////tmp/x.sqlite"}


def test_up_binds_its_workers_as_the_simulator_binds_its_first_plan():
    """Worker k in name order gets the queue the simulator's worker k (in the order of its
    own names) gets, so later rebinding moves the same workers in both."""
    from hadis_celery.commands.up import initial_queues, worker_names
    from planner.policy import assign_queues

    target = {"light_sd35_medium": 6, "heavy_sd35_large": 10}
    names = worker_names(16)
    assert names == sorted(names) and names[0] == "gpu00" and names[-1] == "gpu15"
    sim = assign_queues({str(w): [] for w in range(16)}, target)
    assert initial_queues(target, 16, "x") == [sim[w] for w in sorted(sim)]
    assert initial_queues({}, 2, "light_sdxl") == ["light_sdxl", "light_sdxl"]
    assert worker_names(1) == ["gpu0"]
