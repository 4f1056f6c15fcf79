"""``hadis up``: the whole stack on one machine, on embedded defaults, supervised.

SQLite (``var/hadis.sqlite``), Redis at ``HADIS_BROKER_URL`` (``redis://127.0.0.1:6379/0``),
N Celery workers serving the deployment's models (``--deployment FILE`` or
``HADIS_DEPLOYMENT``; default the packaged ``sd35-replay``: the replay backend on the
packaged profile; each worker loads and warms up its model before it takes a message; a
model that cannot load is refused before anything starts), the planner's worker with Celery
beat embedded, the front door (gunicorn, ``webapp.server``), and Flower when it is
installed. It plans once before anything starts (so the front door has a plan at once),
prints the URLs and the first plan in words, and supervises its children: one that dies is
restarted with a capped back-off (``hadis_celery.procs.Backoff``) while the others keep
serving, and each death and restart is printed, logged as a structured event
(``<logs>/up.log``) and counted in Redis (``hadis:supervisor``). Only Ctrl-C, SIGTERM or the
end of ``--duration`` stops everything.

Replay-only deployments run at ``DEMO_TIME_FACTOR`` unless told otherwise, so answers
arrive in seconds (real backends at time factor 1); ``--demo`` adds a short built-in load
so the dashboard moves.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import click

from hadis_celery.procs import Backoff, exit_words, output_to, port_problem, stop_group

REPO = Path(__file__).resolve().parents[2]
DEMO_TIME_FACTOR = 0.1  # replayed latency x 0.1: the slowest profiled image in seconds
SUPERVISOR_KEY = "hadis:supervisor"
SUPERVISOR_TTL_S = 30.0
DEMO_DURATION_S = 120.0
DEMO_QPS_PER_WORKER = 0.15  # peak demand per worker, in profile time (wall x time factor)
DEMO_PROMPTS = (
    "a red apple on a table",
    "a cat sleeping on a sofa",
    "a lighthouse on a cliff at dusk",
    "a bowl of ramen, studio lighting",
    "a watercolor painting of a fox in a snowy forest",
    "an old sailboat in a harbor at sunrise, oil painting",
    "a golden retriever puppy playing with a ball in the park",
    "a cup of coffee next to an open book by a rainy window",
    "a steampunk city of brass towers and airships above a foggy river, intricate detail",
    "a portrait of an elderly fisherman with a weathered face, dramatic rim light, 85mm",
    "a glass terrarium holding a tiny volcanic island with waterfalls, macro photograph",
    "an isometric diorama of a cozy library inside a hollow tree with glowing lanterns",
    "two astronauts playing chess on the surface of the moon, earth rising behind them",
    "a baroque cathedral interior made entirely of ice, cinematic volumetric light",
    "a hummingbird made of stained glass hovering over a field of sunflowers",
    "a bustling night market in the rain with neon signs reflected in puddles",
)

log = logging.getLogger("hadis.up")


# -- the plain part: names, queues, words -----------------------------------------------------
def worker_names(n: int) -> list[str]:
    """``gpu0`` .. ``gpuN``, zero-padded so that names sort in number order (the beat
    rebinds workers in name order, as the simulator does with its worker numbers)."""
    width = len(str(max(n - 1, 0)))
    return [f"gpu{i:0{width}d}" for i in range(n)]


def initial_queues(workers: dict[str, int], n: int, fallback: str) -> list[str]:
    """One queue per worker from the first plan's counts, by the beat's own rebinding rule
    (``policy.assign_queues`` from nothing, in name order: the simulator's first binding)."""
    from planner.policy import assign_queues

    names = worker_names(n)
    got = assign_queues({w: [] for w in names}, workers)
    return [got.get(w, fallback) for w in names]


def restart_queue(name: str, others: Mapping[str, list[str]], workers: Mapping[str, int],
                  fallback: str) -> str:
    """The queue a restarted worker ``name`` starts on: the one the active plan is short of,
    given what the other live workers consume (the beat's rebinding rule again), so the
    plan is whole before the next tick."""
    from planner.policy import assign_queues

    current = {w: list(q) for w, q in others.items() if w != name}
    current[name] = []
    return assign_queues(current, dict(workers)).get(name, fallback)


def _pct(x: float) -> str:
    return f"{100.0 * x:.0f} %"


def plan_in_words(plan, registry) -> str:
    """The plan as a person says it, with the deployment's model names, e.g. "M -> L,
    router sends 20 % straight to heavy, discriminator reroutes 10 % of light images;
    3 workers light (batch 2), 13 heavy (batch 4)"."""
    c = plan.config
    light, heavy = registry.get(c.light), registry.get(c.heavy)

    def n_workers(n: int) -> str:
        return f"{n} worker{'s' if n != 1 else ''}"

    if c.light == c.heavy:
        n = sum(plan.workers.values())
        return f"{light.name} only, {n_workers(n)} (batch {plan.batch.get(c.light, 1)})"
    nl = int(plan.workers.get(light.light_queue, 0))
    nh = int(plan.workers.get(heavy.heavy_queue, 0))
    head = f"{light.name} -> {heavy.name}, "
    if plan.routing == "none" or c.router_ratio <= 0:
        head += "router sends nothing straight to heavy"
    else:
        how = "at random" if plan.routing == "random" else "straight"
        head += f"router sends {_pct(c.router_ratio)} {how} to heavy"
    if c.disc_ratio > 0 and c.router_ratio < 1:
        head += f", discriminator reroutes {_pct(c.disc_ratio)} of light images"
    return (f"{head}; {n_workers(nl)} light (batch {plan.batch.get(c.light, 1)}), "
            f"{nh} heavy (batch {plan.batch.get(c.heavy, 1)})")


def speed_in_words(registry, time_factor: float) -> str:
    """What the time factor means for a person waiting: the slowest model's batch-1 image."""
    slow = max(registry, key=lambda m: m.batch_latency(1))
    if time_factor == 0:
        return "replayed models answer at once (time factor 0)"
    secs = slow.batch_latency(1) * time_factor
    pace = (f"{1 / time_factor:g}x faster than profiled" if time_factor < 1 else
            "as profiled" if time_factor == 1 else f"{time_factor:g}x slower than profiled")
    return (f"replayed models run {pace} (time factor {time_factor:g}): {slow.name} takes "
            f"{secs:.1f} s per image at batch 1")


def demo_arrivals(duration_s: float, peak_qps: float, seed: int = 0) -> list[float]:
    """Arrival offsets (wall seconds) of the ``--demo`` load: a Poisson stream whose rate
    climbs from a tenth of ``peak_qps`` to the peak at mid-time and back, so the planner
    is seen moving to cheaper cascades and back again."""
    rng = random.Random(seed)
    out, t = [], 0.0
    floor = peak_qps / 10.0
    while True:  # thinning of a homogeneous stream at the peak rate
        t += rng.expovariate(peak_qps)
        if t >= duration_s:
            return out
        rate = floor + (peak_qps - floor) * (1.0 - abs(2.0 * t / duration_s - 1.0))
        if rng.random() < rate / peak_qps:
            out.append(t)


# -- children ------------------------------------------------------------------------------
def child_env(s) -> dict[str, str]:
    """The children's environment: the settings in force, one BLAS thread, and the
    checkout on the path (an editable install made before ``webapp/`` existed misses it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(s.to_env())
    env.update({"HADIS_IMAGE_DIR": str(Path(s.image_dir).resolve()),
                "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


@dataclass
class Child:
    """One supervised process: how to start it, and its life so far."""

    name: str
    args: Callable[[], list[str]]  # re-evaluated at each (re)start
    env: dict[str, str]
    log_dir: Path
    proc: subprocess.Popen | None = None
    started_at: float = 0.0  # monotonic
    deaths_in_a_row: int = 0
    restarts: int = 0
    restart_at: float | None = None  # monotonic, while waiting to restart
    last_exit: str = ""
    history: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        with open(self.log_dir / f"{self.name}.log", "ab") as out:
            self.proc = subprocess.Popen([sys.executable, *self.args()], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.started_at = time.monotonic()
        self.restart_at = None

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the child's process group, SIGKILL what is left after ``grace_s``."""
        if self.proc is not None:
            stop_group(self.proc, grace_s)


class Supervisor:
    """Restarts dead children with back-off and reports each death and restart (stdout, a
    structured event in ``up.log``, the ``hadis:supervisor`` key in Redis)."""

    def __init__(self, children: list[Child], backoff: Backoff, live, echo=click.echo) -> None:
        self.children, self.backoff, self.live, self.echo = children, backoff, live, echo
        self.started = time.time()
        self._published = 0.0

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self.children)

    def check(self, now: float | None = None) -> None:
        """One pass: notice deaths, restart those whose back-off ran out."""
        now = time.monotonic() if now is None else now
        changed = False
        for c in self.children:
            if c.proc is not None and c.proc.poll() is not None:
                self._died(c, now)
                changed = True
            if c.proc is None and c.restart_at is not None and now >= c.restart_at:
                self._restart(c)
                changed = True
        if changed or time.monotonic() - self._published > SUPERVISOR_TTL_S / 3:
            self.publish()

    def _died(self, c: Child, now: float) -> None:
        assert c.proc is not None
        uptime = now - c.started_at
        c.last_exit = exit_words(c.proc.returncode)
        pid = c.proc.pid
        stop_group(c.proc, 0.5)  # what is left of its group (a pool child)
        c.proc = None
        c.deaths_in_a_row = self.backoff.deaths_in_a_row(c.deaths_in_a_row, uptime)
        delay = self.backoff.delay(c.deaths_in_a_row)
        c.restart_at = now + delay
        c.history.append(f"died {time.strftime('%H:%M:%S')} ({c.last_exit})")
        self.echo(f"[{time.strftime('%H:%M:%S')}] {c.name} (pid {pid}) died: {c.last_exit} "
                  f"after {uptime:.1f} s; restarting in {delay:g} s "
                  f"(deaths in a row {c.deaths_in_a_row}, restarts so far {self.restarts})")
        _event("up.child_died", logging.WARNING, child=c.name, pid=pid, exit=c.last_exit,
               uptime_s=round(uptime, 2), restart_in_s=delay,
               deaths_in_a_row=c.deaths_in_a_row)

    def _restart(self, c: Child) -> None:
        try:
            c.start()
        except OSError as exc:  # cannot even fork: try again after the next back-off
            c.deaths_in_a_row += 1
            c.restart_at = time.monotonic() + self.backoff.delay(c.deaths_in_a_row)
            self.echo(f"[{time.strftime('%H:%M:%S')}] {c.name} could not be restarted: {exc}")
            return
        c.restarts += 1
        self.echo(f"[{time.strftime('%H:%M:%S')}] {c.name} restarted (pid {c.pid}); "
                  f"restarts so far: {self.restarts}")
        _event("up.child_restarted", child=c.name, pid=c.pid, restarts=c.restarts,
               restarts_total=self.restarts)

    def status(self) -> dict:
        """What ``hadis:supervisor`` holds: each child's pid, state and restarts."""
        return {"t": time.time(), "started_at": self.started, "restarts": self.restarts,
                "children": {c.name: {"pid": c.pid, "restarts": c.restarts,
                                      "state": "running" if c.proc is not None
                                      else "restarting", "last_exit": c.last_exit}
                             for c in self.children}}

    def publish(self) -> None:
        self._published = time.monotonic()
        try:
            self.live.set_json(SUPERVISOR_KEY, self.status(), ttl_s=SUPERVISOR_TTL_S)
        except Exception as exc:  # Redis down: the stack reports it elsewhere
            log.debug("cannot publish the supervisor's status: %s", exc)

    def stop_all(self) -> None:
        for c in reversed(self.children):
            c.stop()
        try:
            self.live.r.delete(SUPERVISOR_KEY)
        except Exception:
            pass


def _event(name: str, level: int = logging.INFO, **fields: object) -> None:
    from hadis_celery.logs import event

    event(log, name, level, **fields)


def _log_to(path: Path) -> logging.Handler:
    """``hadis.up`` events as JSON lines in ``path`` only (stdout is for people)."""
    from hadis_celery.logs import JsonFormatter

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def _wait_http(url: str, timeout_s: float, children: list[Child]) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if any(c.proc is None or c.proc.poll() is not None for c in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def _live_queues(live) -> dict[str, list[str]]:
    """Short worker name (``gpu01``) -> queues, from the live heartbeats."""
    out: dict[str, list[str]] = {}
    try:
        for host, hb in live.live_workers().items():
            out[host.split("@", 1)[0]] = list(hb.get("queues") or [])
    except Exception:
        pass
    return out


def _demo(base: str, n_workers: int, time_factor: float, stop: threading.Event,
          echo=click.echo) -> None:
    """The ``--demo`` load: ``demo_arrivals`` POSTed open-loop by ``loadgen.send_all``."""
    from hadis_celery.loadgen import Arrival, Client, Endpoint, send_all

    peak = DEMO_QPS_PER_WORKER * n_workers / (time_factor if time_factor > 0 else 1.0)
    offsets = demo_arrivals(DEMO_DURATION_S, peak)
    arrivals = [Arrival(i, t, i % len(DEMO_PROMPTS)) for i, t in enumerate(offsets)]
    echo(f"demo load: {len(arrivals)} prompts over {DEMO_DURATION_S:g} s, up to "
         f"{peak:.2g} per second at mid-time")
    try:
        _, recs = send_all(Client(Endpoint.parse(base), timeout_s=10.0), arrivals,
                           DEMO_PROMPTS, time_scale=1.0, threads=4, stop=stop)
    except Exception as exc:  # the demo must never take the stack down
        echo(f"demo load stopped: {exc}")
        return
    sent = [r for r in recs if r.http_status is not None or r.status == "no_answer"]
    accepted = sum(1 for r in recs if r.http_status == 202)
    if not stop.is_set():
        echo(f"demo load done: {len(sent)} sent, {accepted} accepted, "
             f"{len(sent) - accepted} refused or unanswered")


# -- the command ---------------------------------------------------------------------------
@click.command("up")
@click.option("--deployment", "deployment_file", default=None, metavar="FILE",
              help="The deployment file (models, table, router, image store; "
                   "docs/deployment.md), or a packaged example's name (default "
                   "HADIS_DEPLOYMENT, else sd35-replay). Every child reads it.")
@click.option("--workers", "n_workers", default=2, show_default=True,
              help="GPU workers to start (each preloads the model of its first queue).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="Front door port.")
@click.option("--time-factor", type=click.FloatRange(min=0), default=None,
              help=f"Replay latency factor (default HADIS_TIME_FACTOR, else "
                   f"{DEMO_TIME_FACTOR:g}: answers in seconds; 1 is real time).")
@click.option("--plan-period", type=float, default=None,
              help="Seconds between plans (default HADIS_PLAN_PERIOD_S, else 10).")
@click.option("--duration", type=float, default=0.0,
              help="Stop after this many seconds (0: run until Ctrl-C).")
@click.option("--demo", is_flag=True,
              help=f"Send a short built-in load ({DEMO_DURATION_S:g} s of prompts, rising "
                   "and falling) once the stack is ready, so the dashboard moves.")
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
@click.option("--web-workers", type=click.IntRange(min=1), default=None,
              help="Front-door processes under gunicorn (default HADIS_WEB_WORKERS, else 2).")
@click.option("--worker-metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="First port of the workers' Prometheus exporters (worker i: port + i; "
                   "default HADIS_WORKER_METRICS_PORT, 0: off).")
@click.option("--restart-cap", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True,
              help="Longest wait, seconds, before restarting a child that keeps dying.")
def command(deployment_file: str | None, n_workers: int, host: str, port: int,
            time_factor: float | None,
            plan_period: float | None, duration: float, demo: bool, flower: bool,
            flower_port: int, log_dir: str, database: str | None, profile: str | None,
            planner: str | None, solver: str | None, slo_s: float | None,
            half_life: float | None, swap_delay: float | None, rate_limit: int | None,
            budget: int | None, web_workers: int | None, worker_metrics_port: int | None,
            restart_cap: float) -> None:
    """Start the local stack (front door, Redis queues, workers, planner beat) for a
    deployment and keep it up: a child that dies is restarted; Ctrl-C stops everything."""
    import importlib.util

    from hadis_celery import db
    from hadis_celery.beat import PlanLoop
    from hadis_celery.celery import make_app
    from hadis_celery.deployment import deployment
    from hadis_celery.imagestore import image_store, location
    from hadis_celery.live import LiveState
    from hadis_celery.settings import settings
    from planner.baselines import PLANNERS
    from workers.backends import is_replay

    if n_workers < 1:
        raise click.BadParameter("at least one worker", param_hint="--workers")
    if planner is not None and planner not in PLANNERS:
        raise click.BadParameter(f"unknown planner {planner!r}; one of {', '.join(PLANNERS)}",
                                 param_hint="--planner")
    problem = port_problem(host, port)
    if problem:
        raise click.ClickException(f"{problem}: is another `hadis up` running? Choose another "
                                   f"port with --port (make up ARGS=\"--port {port + 1}\")")
    try:
        s = settings()
        if deployment_file is not None:
            s = replace(s, deployment=deployment_file)
        dep = deployment(s)  # refuses a model that cannot load, naming it and the fix
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    replay_only = all(is_replay(m.backend) for m in dep.models if m.plan)
    if time_factor is None and not os.environ.get("HADIS_TIME_FACTOR", "").strip():
        time_factor = DEMO_TIME_FACTOR if replay_only else 1.0
    given = {"time_factor": time_factor, "plan_period_s": plan_period, "database_url": database,
             "profile": profile, "planner": planner, "solver": solver, "slo_s": slo_s,
             "demand_half_life_s": half_life, "swap_delay_s": swap_delay,
             "rate_limit_per_min": rate_limit, "worker_budget": budget,
             "web_workers": web_workers, "worker_metrics_port": worker_metrics_port}
    s = replace(s, **{k: v for k, v in given.items() if v is not None})
    if not (s.time_factor >= 0 and s.plan_period_s > 0):
        raise click.BadParameter("time factor must be >= 0 and plan period > 0")
    try:
        live = LiveState.from_url(s.state_url)
        live.ping()
    except Exception as exc:
        raise click.ClickException(
            f"Redis is not reachable at {s.state_url} ({exc}); start redis-server or set "
            "HADIS_BROKER_URL") from None
    try:
        engine = db.make_engine(s.database_url)
        db.ensure_schema(engine)
        engine.dispose()
    except Exception as exc:
        raise click.ClickException(f"database {s.database_url}: {exc}") from None
    try:
        image_store(s).ensure()
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"image store {location(s)}: {exc}") from None
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    handler = _log_to(logs / "up.log")

    try:  # the first plan, for the workers about to start (none is live yet)
        loop = PlanLoop.from_settings(replace(s, worker_budget=s.worker_budget or n_workers),
                                      make_app(s))
        with output_to(logs / "up.log"):  # the solver's banner is for the log, not people
            loop.tick()
    except ValueError as exc:  # a bad profile table, planner or solver input
        raise click.ClickException(f"cannot make the first plan: {exc}") from None
    plan = loop.live.get_plan()
    first_words = plan_in_words(loop.previous, loop.table.registry)
    queues = initial_queues(dict(plan.workers) if plan else {}, n_workers,
                            plan.light_queue if plan else loop.queues[0])
    fallback = plan.light_queue if plan else loop.queues[0]
    env = child_env(s)

    def worker_args(name: str, first_queue: str) -> Callable[[], list[str]]:
        started = [False]

        def args() -> list[str]:
            q = first_queue
            if started[0]:  # a restart: the queue the active plan is short of now
                p = live.get_plan()
                q = restart_queue(name, _live_queues(live), dict(p.workers) if p else {},
                                  p.light_queue if p else fallback)
            started[0] = True
            return ["-m", "celery", "-A", "hadis_celery", "worker", "-Q", q, "-c", "1",
                    "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "-l", "info"]
        return args

    def worker_env(i: int) -> dict[str, str]:
        """Worker i's exporter port (``workers.metrics``), when the exporters are on."""
        if s.worker_metrics_port <= 0:
            return env
        return {**env, "HADIS_WORKER_METRICS_PORT": str(s.worker_metrics_port + i)}

    children = [Child(name, worker_args(name, q), worker_env(i), logs)
                for i, (name, q) in enumerate(zip(worker_names(n_workers), queues,
                                                  strict=True))]
    no_metrics = {**env, "HADIS_WORKER_METRICS_PORT": "0"}  # the planner serves no batches
    children.append(Child("planner", lambda: [
        "-m", "celery", "-A", "hadis_celery", "worker", "-Q", "hadis_control", "-c", "1",
        "-n", "planner@%h", "-B", "-s", str(logs / "celerybeat-schedule"),
        "--without-mingle", "--without-gossip", "-l", "info"], no_metrics, logs))
    children.append(Child("frontdoor", lambda: ["-m", "webapp", "--host", host,
                                                 "--port", str(port)], env, logs))
    has_flower = flower and importlib.util.find_spec("flower") is not None
    flower_note = ""
    if has_flower and (why := port_problem(host, flower_port)):
        has_flower = False
        flower_note = f"  Flower      not started: {why} (--flower-port to choose another)"
    if has_flower:
        children.append(Child("flower", lambda: [
            "-m", "celery", "-A", "hadis_celery", "flower", f"--port={flower_port}",
            f"--address={host}"], env, logs))
    sup = Supervisor(children, Backoff(cap_s=restart_cap), live)
    stopping = threading.Event()

    def _stop(*_):
        stopping.set()

    old = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    demo_thread: threading.Thread | None = None
    try:
        for c in children:
            c.start()
        base = f"http://{host}:{port}"
        if not _wait_http(f"{base}/v1/health", 90, children):
            dead = [f"{c.name} ({exit_words(c.proc.returncode)})" for c in children
                    if c.proc is not None and c.proc.poll() is not None]
            raise click.ClickException(f"the stack did not come up (exited: {dead or 'none'}); "
                                       f"see {logs}/*.log")
        sup.publish()
        echo = click.echo
        kind = "replay " if replay_only else ""
        echo(f"HADIS stack up on {socket.gethostname()}: deployment {dep.name}, {n_workers} "
             f"{kind}worker{'s' if n_workers != 1 else ''}, plan every {s.plan_period_s:g} s, "
             f"default SLO {s.slo_s:g} s")
        if replay_only:
            echo(f"  speed       {speed_in_words(loop.table.registry, s.time_factor)}")
        else:
            echo("  models      " + ", ".join(f"{m.name} ({m.backend})"
                                              for m in loop.table.registry))
        echo(f"  first plan  {first_words}")
        echo(f"  web form    {base}/ui/")
        echo(f"  dashboard   {base}/ui/dashboard")
        echo(f"  metrics     {base}/metrics")
        echo(f"  API docs    {base}/v1/openapi.json   (POST {base}/v1/generations "
             f"{{\"prompt\": \"...\"}})")
        echo(f"  health      {base}/v1/health   ready {base}/readyz   live {base}/livez")
        echo(f"  front door  gunicorn, {s.web_workers} x "
             f"{s.web_worker_class.rsplit('.', 1)[-1]}, {s.web_threads} threads each")
        if s.worker_metrics_port > 0:
            echo(f"  worker metrics  http://{host}:{s.worker_metrics_port}/metrics .. "
                 f":{s.worker_metrics_port + n_workers - 1}")
        if has_flower:
            echo(f"  Flower      http://{host}:{flower_port}/")
        elif flower_note:
            echo(flower_note)
        echo(f"  database    {s.database_url}   broker {s.broker_url}")
        echo(f"  images      {location(s)}   logs {logs.resolve()}")
        echo("  pids        " + " ".join(f"{c.name}={c.pid}" for c in children))
        echo("ready; a process that dies is restarted; Ctrl-C stops everything")
        _event("up.ready", url=base, workers=n_workers, time_factor=s.time_factor,
               pids={c.name: c.pid for c in children})
        if demo:
            demo_thread = threading.Thread(
                target=_demo, args=(base, n_workers, s.time_factor, stopping), daemon=True)
            demo_thread.start()
        end = time.monotonic() + duration if duration > 0 else None
        while not stopping.is_set():
            if end is not None and time.monotonic() >= end:
                break
            sup.check()
            stopping.wait(0.2)
    finally:
        stopping.set()
        if demo_thread is not None:
            demo_thread.join(5)
        sup.stop_all()
        for sig, h in old.items():
            signal.signal(sig, h)
        _event("up.stopped", restarts=sup.restarts)
        log.removeHandler(handler)
        handler.close()
        click.echo(f"stopped ({sup.restarts} restart{'s' if sup.restarts != 1 else ''})")

