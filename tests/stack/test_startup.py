"""What a person (or a script) reads at start-up: ``hadis plan --json`` is JSON and nothing
else, the plan in words, the restart back-off, the ``--demo`` load's shape, a taken port in
one line, and ``celery -A hadis_celery inspect hadis_worker`` against a real worker."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from click.testing import CliRunner

from hadis_celery.cli import main
from hadis_celery.commands.up import demo_arrivals, plan_in_words, restart_queue
from hadis_celery.deployment import registry
from hadis_celery.procs import Backoff, exit_words
from hadis_celery.settings import Settings
from planner.cascade import CascadeConfig
from planner.plan import Plan
from tests.stack.conftest import REPO, celery_worker, make_settings, settings_env


def test_plan_json_is_pure_json_on_stdout():
    # the HiGHS banner is printed by its C++ constructor; it must go to stderr
    out = subprocess.run(
        [sys.executable, "-m", "hadis_celery.cli", "plan", "--profile", "sd35", "--demand", "1",
         "--workers", "4", "--solver", "highs", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["solver"].startswith("highs") and len(plan["pair"]) == 2
    assert "HiGHS" not in out.stdout


def _plan(light: int, heavy: int, router: float, disc: float, workers: dict[str, int],
          batch: dict[int, int]) -> Plan:
    cfg = CascadeConfig(light=light, heavy=heavy, router_ratio=router, theta=1.0,
                        disc_ratio=disc, tau=0.1, fid=20.0)
    return Plan(planner="hadis", config=cfg, workers=workers, batch=batch, fid=20.0,
                utilisation={}, demand=0.0, slo_s=60.0, budget=sum(workers.values()))


def test_plan_in_words_uses_the_deployments_names():
    reg = registry(Settings())
    light, heavy = list(reg)[0], list(reg)[-1]
    words = plan_in_words(_plan(light.id, heavy.id, 0.2, 0.1,
                                {light.light_queue: 3, heavy.heavy_queue: 13},
                                {light.id: 2, heavy.id: 4}), reg)
    assert words == (f"{light.name} -> {heavy.name}, router sends 20 % straight to heavy, "
                     "discriminator reroutes 10 % of light images; 3 workers light (batch 2), "
                     "13 heavy (batch 4)")
    single = plan_in_words(_plan(heavy.id, heavy.id, 0.0, 0.0, {heavy.light_queue: 2},
                                 {heavy.id: 1}), reg)
    assert single == f"{heavy.name} only, 2 workers (batch 1)"


def test_backoff_doubles_to_its_cap_and_resets_after_a_healthy_while():
    b = Backoff(initial_s=1, factor=2, cap_s=30, reset_after_s=60)
    assert [b.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.deaths_in_a_row(5, uptime_s=3) == 6  # a crash loop backs off further
    assert b.deaths_in_a_row(5, uptime_s=61) == 1  # ran a healthy while: quick restart
    assert exit_words(-9) == "killed by SIGKILL" and exit_words(2) == "exit status 2"


def test_a_restarted_worker_takes_the_queue_the_plan_is_short_of():
    plan = {"light_a": 1, "heavy_b": 2}
    others = {"gpu0": ["heavy_b"], "gpu2": ["light_a"]}
    assert restart_queue("gpu1", others, plan, "light_a") == "heavy_b"
    assert restart_queue("gpu1", {"gpu0": ["heavy_b"]}, {}, "light_a") == "light_a"


def test_demo_load_rises_and_falls():
    t = demo_arrivals(120.0, 4.0, seed=1)
    assert t == sorted(t) and all(0 <= x < 120 for x in t)
    thirds = [sum(1 for x in t if lo <= x < lo + 40) for lo in (0, 40, 80)]
    assert thirds[1] > thirds[0] and thirds[1] > thirds[2]
    assert 150 < len(t) < 350  # mean rate about 0.55 x peak over 120 s
    assert demo_arrivals(120.0, 4.0, seed=1) == t  # the same demo every time


def test_a_taken_port_is_one_clear_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = CliRunner().invoke(main, ["up", "--port", str(port), "--no-flower",
                                        "--logs", str(tmp_path / "log")])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"port {port} on 127.0.0.1 is already in use" in lines[0]
    assert "Traceback" not in res.output


def test_celery_inspect_hadis_worker_answers_from_a_real_worker(tmp_path, redis_db):
    from hadis_celery.celery import make_app

    s = make_settings(f"sqlite:///{tmp_path / 'w.sqlite'}", tmp_path / "images")
    spec = list(registry(Settings()))[0]
    queue = spec.light_queue
    with celery_worker(s, queue, tmp_path, make_app(s)) as w:
        out = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "hadis_celery", "inspect", "hadis_worker",
             "-d", w.name, "-t", "5", "-j"],
            cwd=REPO, env=settings_env(s), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not recognized" not in out.stderr
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert reply[w.name]["queues"] == [queue]
    assert reply[w.name]["models"] == {queue: spec.id}
