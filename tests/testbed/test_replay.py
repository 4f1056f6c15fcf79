"""``hadis replay`` against a real front door and a real Celery replay worker: the open-loop
schedule honours the scaled arrival times, every arrival is recorded (accepted, refused with
400 or 503), and the report files agree with the per-query CSV."""

from __future__ import annotations

import csv
import json
import math

from click.testing import CliRunner

from hadis_celery.cli import main
from hadis_celery.live import PLAN_KEY
from planner.reference import read_prompts, reference_dir
from tests.testbed.conftest import finite, write_trace

K = 0.5  # wall seconds per trace second
N_GOOD = 24


def _prompts(tmp_path):
    """24 reference captions (recorded scores) and a blank line (the API refuses it)."""
    ref = read_prompts(reference_dir() / "prompts" / "imagenet1k_captions_5k.txt")
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(ref[i * 97] for i in range(N_GOOD)) + "\n\n")
    return path


def _run(args: list[str]) -> tuple[dict, str]:
    res = CliRunner().invoke(main, ["replay", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


def test_replay_honours_the_schedule_records_every_arrival_and_writes_the_report(
        stack, tmp_path):
    prompts = _prompts(tmp_path)
    # 24 arrivals 125 ms apart, two at the same instant, one blank prompt (index 24)
    rows = [(125.0 * i, i) for i in range(N_GOOD)] + [(1000.0, N_GOOD)]
    trace = write_trace(tmp_path / "trace.txt", rows)
    out = tmp_path / "report"
    summary, stderr = _run(["--trace", str(trace), "--prompts", str(prompts), "--url", stack.url,
                            "--time-scale", str(K), "--slo", "60", "--threads", "4",
                            "--wait", "20", "--out", str(out)])

    assert summary["arrivals"] == len(rows) == summary["queries"]
    assert summary["http"] == {"202": N_GOOD, "400": 1}, stack.tail()
    assert summary["open_at_end"] == 0
    with (out / "queries.csv").open() as fh:
        q = list(csv.DictReader(fh))
    assert len(q) == len(rows)
    assert sorted(int(r["index"]) for r in q) == list(range(len(rows)))

    # the schedule: due at t x K after t0, never sent before it is due (one clock, so no
    # margin), received after it is due (the server's wall clock: a margin for clock steps,
    # not for load; how late a send is depends on the machine's load and is not asserted)
    t0 = summary["t0"]
    for r in q:
        due = float(r["scheduled_at"])
        assert math.isclose(due - t0, float(r["t_s"]) * K, abs_tol=1e-6)
        assert float(r["sent_at"]) >= due
        if r["http_status"] == "202":
            assert float(r["received_at"]) >= due - 0.05
            assert math.isclose(float(r["deadline"]) - float(r["received_at"]), 60 * K,
                                abs_tol=1e-6)  # --slo is in trace seconds, sent x K

    # every arrival has an outcome; the refused one is a dropped arrival with its reason
    refused = [r for r in q if r["http_status"] == "400"]
    assert len(refused) == 1 and refused[0]["outcome"] == "dropped"
    assert refused[0]["outcome_reason"].startswith("HTTP 400: empty_prompt")
    good = [r for r in q if r["http_status"] == "202"]
    assert all(r["status"] in ("done", "dropped", "failed") for r in good), stack.tail()
    assert all(r["plan_id"] == str(stack.plan.plan_id) for r in good)
    for r in good:  # the path follows what the stack did
        models = r["models"].split(",") if r["models"] else []
        if r["route"] == "heavy":
            assert r["path"] == "direct" and models in (["1"], [])
        elif len(models) == 2:
            assert r["path"] == "rerouted" and models == ["0", "1"]
        else:
            assert r["path"] == "light" and models in (["0"], [])
        if r["outcome"] in ("served", "late"):
            assert r["status"] == "done" and finite(r["quality"]) and finite(r["latency_s"])
            assert math.isclose(float(r["latency_profile_s"]), float(r["latency_s"]) / K)
    assert {r["route"] for r in good} == {"light", "heavy"}  # θ at the router's median

    # the report agrees with the CSV
    for name in ("queries.csv", "summary.json", "timeseries.csv", "plans.csv",
                 "timeseries.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["served"] == summary["served"]
    outcomes = [r["outcome"] for r in q]
    assert (summary["served"], summary["late"], summary["dropped"]) == tuple(
        outcomes.count(k) for k in ("served", "late", "dropped"))
    assert math.isclose(summary["slo_violation_ratio"],
                        1 - outcomes.count("served") / len(q), abs_tol=1e-5)
    assert summary["executions"] == {
        m: sum(r["models"].split(",").count(m) for r in q) for m in summary["executions"]}
    with (out / "timeseries.csv").open() as fh:
        ts = list(csv.DictReader(fh))
    assert {r["policy"] for r in ts} == {"live"}
    assert sum(float(r["demand_qps"]) * 10.0 for r in ts) == len(q)  # 10 s bins
    with (out / "plans.csv").open() as fh:
        plans = list(csv.DictReader(fh))
    assert [p["plan_id"] for p in plans] == [str(stack.plan.plan_id)]
    # FID of a (0, 1) mix lies between the pair's single-model ends (29.8 and about 20)
    assert 19.0 < summary["fid"] < 30.5
    assert f"| live | {len(q)} |" in (out / "report.md").read_text()
    assert "sent: 100%" in stderr  # the progress bar


def test_a_stack_without_a_plan_answers_503_and_each_is_recorded_as_dropped(stack, tmp_path):
    prompts = _prompts(tmp_path)
    trace = write_trace(tmp_path / "trace.txt", [(0, 1), (10, 2), (20, 3)])
    stack.live.r.delete(PLAN_KEY)
    try:
        summary, _ = _run(["--trace", str(trace), "--prompts", str(prompts), "--url", stack.url,
                           "--time-scale", "1", "--out", str(tmp_path / "out")])
    finally:
        stack.live.publish_plan(stack.plan)
    assert summary["http"] == {"503": 3}
    assert summary["dropped"] == 3 and summary["slo_violation_ratio"] == 1.0
    with (tmp_path / "out" / "queries.csv").open() as fh:
        q = list(csv.DictReader(fh))
    assert [r["outcome_reason"].split(":")[0:2] for r in q] == [["HTTP 503", " no_plan"]] * 3
    assert all(r["id"] == "" for r in q)


def test_limit_start_and_duration_replay_a_slice(stack, tmp_path):
    prompts = _prompts(tmp_path)
    trace = write_trace(tmp_path / "trace.txt", [(100.0 * i, i) for i in range(20)])
    summary, _ = _run(["--trace", str(trace), "--prompts", str(prompts), "--url", stack.url,
                       "--time-scale", "0.5", "--start", "0.5", "--duration", "1",
                       "--limit", "6", "--out", str(tmp_path / "out")])
    with (tmp_path / "out" / "queries.csv").open() as fh:
        q = list(csv.DictReader(fh))
    # arrivals at 0.5 .. 1.4 s are the slice; the first 6 of them, timed from 0.5 s
    assert summary["arrivals"] == 6 == len(q)
    assert [int(r["index"]) for r in q] == [5, 6, 7, 8, 9, 10]
    assert [round(float(r["t_s"]), 3) for r in q] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert summary["http"] == {"202": 6}
