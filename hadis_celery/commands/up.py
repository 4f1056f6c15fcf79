"""``hadis up``: the whole stack on one machine, on embedded defaults.

SQLite (``var/hadis.sqlite``), Redis at ``HADIS_BROKER_URL`` (``redis://127.0.0.1:6379/0``),
N Celery workers with the replay backend on the packaged sd35 profile, the planner's worker
with Celery beat embedded, the Flask front door, and Flower when it is installed. It plans
once before anything starts (so the front door has a plan at once), prints the URLs, and
stops every process it started on Ctrl-C, SIGTERM, the end of ``--duration``, or when one of
them dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import click


@dataclass
class Child:
    name: str
    proc: subprocess.Popen

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the child's process group, SIGKILL what is left after ``grace_s``."""
        from hadis_celery.procs import stop_group

        stop_group(self.proc, grace_s)


REPO = Path(__file__).resolve().parents[2]


def child_env(s) -> dict[str, str]:
    """The children's environment: the settings in force, one BLAS thread, and the
    checkout on the path (an editable install made before ``webapp/`` existed misses it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(s.to_env())
    env.update({"HADIS_IMAGE_DIR": str(Path(s.image_dir).resolve()),
                "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def _spawn(name: str, args: list[str], env: dict, log_dir: Path, quiet: bool) -> Child:
    out = open(log_dir / f"{name}.log", "ab") if quiet else None  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT if quiet else None,
                            start_new_session=True)
    if out is not None:
        out.close()
    return Child(name, proc)


def worker_names(n: int) -> list[str]:
    """``gpu0`` .. ``gpuN``, zero-padded so that names sort in number order (the beat
    rebinds workers in name order, as the simulator does with its worker numbers)."""
    width = len(str(max(n - 1, 0)))
    return [f"gpu{i:0{width}d}" for i in range(n)]


def initial_queues(workers: dict[str, int], n: int, fallback: str) -> list[str]:
    """One queue per worker from the first plan's counts, by the beat's own rebinding rule
    (``policy.assign_queues`` from nothing, in name order: the simulator's first binding)."""
    from hadis_celery.policy import assign_queues

    names = worker_names(n)
    got = assign_queues({w: [] for w in names}, workers)
    return [got.get(w, fallback) for w in names]


def _wait_http(url: str, timeout_s: float, children: list[Child]) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if any(c.proc.poll() is not None for c in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


@click.command("up")
@click.option("--workers", "n_workers", default=2, show_default=True,
              help="Replay GPU workers to start.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="Front door port.")
@click.option("--time-factor", type=float, default=None,
              help="Replay latency factor (default HADIS_TIME_FACTOR, else 1: real time).")
@click.option("--plan-period", type=float, default=None,
              help="Seconds between plans (default HADIS_PLAN_PERIOD_S, else 10).")
@click.option("--duration", type=float, default=0.0,
              help="Stop after this many seconds (0: run until Ctrl-C).")
@click.option("--flower/--no-flower", default=True, show_default=True,
              help="Start Flower (when installed).")
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--logs", "log_dir", default="var/log", show_default=True,
              type=click.Path(file_okay=False), help="Folder of the processes' logs.")
@click.option("--database", default=None,
              help="SQL database URL (default HADIS_DATABASE_URL, else var/hadis.sqlite).")
@click.option("--profile", default=None,
              help="Configuration table: a JSON file or sql:<name> (default HADIS_PROFILE).")
@click.option("--planner", default=None,
              help="The beat's planner: hadis or a baseline (default HADIS_PLANNER, else hadis).")
@click.option("--solver", default=None, help="MILP solver (default HADIS_SOLVER, else highs).")
@click.option("--slo", "slo_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Default SLO of a request, wall seconds (default HADIS_SLO_S, else 60).")
@click.option("--half-life", type=click.FloatRange(min=0, min_open=True), default=None,
              help="EWMA demand half-life, wall seconds (default HADIS_DEMAND_HALF_LIFE_S).")
@click.option("--swap-delay", type=click.FloatRange(min=0), default=None,
              help="Replay model-swap delay, profile seconds (x the time factor; "
                   "default HADIS_SWAP_DELAY_S, else 10).")
@click.option("--rate-limit", type=click.IntRange(min=0), default=None,
              help="Requests per client per minute, 0 for none (load generation; default "
                   "HADIS_RATE_LIMIT_PER_MIN, else 600).")
@click.option("--budget", type=click.IntRange(min=0), default=None,
              help="Workers the planner may use, 0 for the live ones (default HADIS_WORKERS).")
def command(n_workers: int, host: str, port: int, time_factor: float | None,
            plan_period: float | None, duration: float, flower: bool, flower_port: int,
            log_dir: str, database: str | None, profile: str | None, planner: str | None,
            solver: str | None, slo_s: float | None, half_life: float | None,
            swap_delay: float | None, rate_limit: int | None, budget: int | None) -> None:
    """Start the local stack (front door, Redis queues, replay workers, planner beat)."""
    import importlib.util

    from hadis_celery import db
    from hadis_celery.celery import make_app
    from hadis_celery.live import LiveState
    from hadis_celery.settings import settings
    from planner.baselines import PLANNERS
    from planner.beat import PlanLoop

    if n_workers < 1:
        raise click.BadParameter("at least one worker", param_hint="--workers")
    if planner is not None and planner not in PLANNERS:
        raise click.BadParameter(f"unknown planner {planner!r}; one of {', '.join(PLANNERS)}",
                                 param_hint="--planner")
    try:
        s = settings()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    given = {"time_factor": time_factor, "plan_period_s": plan_period, "database_url": database,
             "profile": profile, "planner": planner, "solver": solver, "slo_s": slo_s,
             "demand_half_life_s": half_life, "swap_delay_s": swap_delay,
             "rate_limit_per_min": rate_limit, "worker_budget": budget}
    s = replace(s, **{k: v for k, v in given.items() if v is not None})
    if not (s.time_factor >= 0 and s.plan_period_s > 0):
        raise click.BadParameter("time factor must be >= 0 and plan period > 0")
    try:
        LiveState.from_url(s.broker_url).ping()
    except Exception as exc:
        raise click.ClickException(
            f"Redis is not reachable at {s.broker_url} ({exc}); start redis-server or set "
            "HADIS_BROKER_URL") from None
    try:
        engine = db.make_engine(s.database_url)
        db.ensure_schema(engine)
        engine.dispose()
    except Exception as exc:
        raise click.ClickException(f"database {s.database_url}: {exc}") from None
    Path(s.image_dir).mkdir(parents=True, exist_ok=True)
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)

    try:
        loop = PlanLoop.from_settings(s, make_app(s))
        first = loop.tick()  # a plan before anything serves
    except ValueError as exc:  # a bad profile table, planner or solver input
        raise click.ClickException(f"cannot make the first plan: {exc}") from None
    plan = loop.live.get_plan()
    queues = initial_queues(dict(plan.workers) if plan else {}, n_workers,
                            plan.light_queue if plan else "light_sdxl")
    env = child_env(s)
    children: list[Child] = []
    stopping = False
    failed: str | None = None

    def _stop(*_):
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for name, q in zip(worker_names(n_workers), queues, strict=True):
            children.append(_spawn(name, [
                "-m", "celery", "-A", "hadis_celery", "worker", "-Q", q, "-c", "1",
                "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "-l", "warning"],
                env, logs, quiet=True))
        children.append(_spawn("planner", [
            "-m", "celery", "-A", "hadis_celery", "worker", "-Q", "hadis_control", "-c", "1",
            "-n", "planner@%h", "-B", "-s", str(logs / "celerybeat-schedule"),
            "--without-mingle", "--without-gossip", "-l", "warning"], env, logs, quiet=True))
        children.append(_spawn("frontdoor", ["-m", "webapp", "--host", host,
                                             "--port", str(port)], env, logs, quiet=True))
        has_flower = flower and importlib.util.find_spec("flower") is not None
        if has_flower:
            children.append(_spawn("flower", [
                "-m", "celery", "-A", "hadis_celery", "flower", f"--port={flower_port}",
                f"--address={host}"], env, logs, quiet=True))
        base = f"http://{host}:{port}"
        if not _wait_http(f"{base}/v1/health", 90, children):
            dead = [c.name for c in children if c.proc.poll() is not None]
            raise click.ClickException(f"the stack did not come up (exited: {dead or 'none'}); "
                                       f"see {logs}/*.log")
        click.echo(f"HADIS stack up: {n_workers} replay workers (time factor "
                   f"{s.time_factor:g}), plan every {s.plan_period_s:g} s, first plan "
                   f"{first['pair']} batch {first['batch']}")
        click.echo(f"  front door  {base}/v1/generations  (POST {{\"prompt\": \"...\"}})")
        click.echo(f"  OpenAPI     {base}/v1/openapi.json")
        click.echo(f"  health      {base}/v1/health")
        if has_flower:
            click.echo(f"  Flower      http://{host}:{flower_port}/")
        click.echo(f"  database    {s.database_url}   broker {s.broker_url}")
        click.echo(f"  images      {Path(s.image_dir).resolve()}   logs {logs.resolve()}")
        click.echo("  pids        " + " ".join(f"{c.name}={c.proc.pid}" for c in children))
        click.echo("ready; Ctrl-C stops everything", err=False)
        end = time.monotonic() + duration if duration > 0 else None
        while not stopping:
            if end is not None and time.monotonic() >= end:
                break
            dead = [c for c in children if c.proc.poll() is not None]
            if dead:
                failed = (f"{dead[0].name} exited ({dead[0].proc.returncode}); see "
                          f"{logs}/{dead[0].name}.log")
                break
            time.sleep(0.2)
    finally:
        for c in reversed(children):
            c.stop()
        for sig, h in old.items():
            signal.signal(sig, h)
        click.echo("stopped")
    if failed:
        raise click.ClickException(failed)
