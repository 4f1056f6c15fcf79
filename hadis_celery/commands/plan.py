"""``hadis plan``: solve one planning period offline and print the plan; ``hadis plan
replay``: plan a recorded run again from the inputs the beat stored with each plan.

The table is the deployment's (``HADIS_DEPLOYMENT``; the packaged ``sd35-replay`` when
unset) or ``--profile``: a profile stored in SQL (``hadis profile import``) by name, a
profile folder in the artifact's layout, or a profile JSON file (``hadis profile export``).
A name the database does not hold that is the deployment table's own name means that table.
Every table is aligned with the deployment: only its deployed, planned models are planned.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import click

from planner.baselines import PLANNERS, make_planner
from planner.plan import Plan, PlannerInputError, PlannerState, QueueState, state_from_inputs
from planner.solvers import SOLVERS, SolverUnavailable


def load_profile(profile: str | None, version: int | None, url: str | None
                 ) -> tuple[list, object, str]:
    """(rows, registry, where they came from) for ``--profile`` (the deployment's resolver,
    ``hadis_celery.deployment.table_for``; no ``--profile``: the deployment's table)."""
    from hadis_celery.deployment import table_for

    try:
        t, source = table_for(profile, version, url)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    return list(t.rows), t.registry, source


def _queues(specs: tuple[str, ...]) -> dict[str, QueueState]:
    out = {}
    for s in specs:
        try:
            name, rest = s.split("=", 1)
            length, _, rate = rest.partition("@")
            out[name.strip()] = QueueState(int(length), float(rate) if rate else 0.0)
        except (ValueError, PlannerInputError) as exc:
            raise click.BadParameter(f"{s!r}: expected QUEUE=LENGTH[@RATE] ({exc})",
                                     param_hint="--queue") from exc
    return out


@click.group("plan", invoke_without_command=True)
@click.option("--profile", default=None,
              help="Stored profile name, profile folder or JSON (default: the deployment's).")
@click.option("--version", "version", type=int, default=None, help="Profile version.")
@click.option("--url", default=None, metavar="URL", help="Database URL (default: settings).")
@click.option("--demand", type=float, default=None, help="Demand λ, queries per second.")
@click.option("--workers", type=int, default=None, help="Worker (GPU) budget S.")
@click.option("--slo", "slo_s", type=float, default=60.0, show_default=True,
              help="Latency SLO, seconds.")
@click.option("--planner", "planner_name", type=click.Choice(list(PLANNERS)), default="hadis",
              show_default=True)
@click.option("--solver", type=click.Choice(list(SOLVERS)), default="gurobi", show_default=True,
              help="MILP solver (gurobi falls back to highs when unlicensed or too large).")
@click.option("--queue", "queue_specs", multiple=True, metavar="QUEUE=LEN[@RATE]",
              help="Current backlog (and arrivals/s) of a queue, e.g. heavy_big=12@0.5.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object.")
@click.pass_context
def command(ctx: click.Context, profile: str | None, version: int | None, url: str | None,
            demand: float | None, workers: int | None, slo_s: float, planner_name: str,
            solver: str, queue_specs: tuple[str, ...], as_json: bool) -> None:
    """Pick the configuration, workers and batch sizes for one demand level (``--demand``,
    ``--workers``), or replay a recorded run (``hadis plan replay``)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"profile": profile, "version": version, "url": url}
        return
    for name, value in (("--demand", demand), ("--workers", workers)):
        if value is None:
            raise click.UsageError(f"Missing option '{name}' (or a sub-command: replay).")
    rows, registry, source = load_profile(profile, version, url)
    try:
        state = PlannerState(demand=demand, workers=workers, slo_s=slo_s, table=rows,
                             registry=registry, queues=_queues(queue_specs))
        plan = make_planner(planner_name, solver=solver).plan(state)
    except (PlannerInputError, SolverUnavailable, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        d = plan.to_dict()
        d["profile"] = source
        click.echo(json.dumps(d, allow_nan=False))
        return
    c = plan.config
    names = {m.id: m.name for m in registry}
    click.echo(f"{plan.planner} on {source}: λ={demand:g} q/s, S={workers}, SLO={slo_s:g} s")
    click.echo(f"  pair      {names[c.light]} -> {names[c.heavy]}  (router {c.router_ratio:g}, "
               f"discriminator {c.disc_ratio:g}; θ={c.theta:g}, τ={c.tau:g}, "
               f"routing={plan.routing})")
    click.echo(f"  FID       {plan.fid:g}")
    for q, n in sorted(plan.workers.items()):
        m = registry.by_queue(q)
        click.echo(f"  {q:28s} {n:4d} workers  batch {plan.batch[m.id]:2d}  "
                   f"utilisation {plan.utilisation[m.id]:.2f}")
    for name, s in plan.path_latency_s.items():
        click.echo(f"  {name:9s} path {s:.2f} s")
    click.echo(f"  served    {plan.served_fraction:.1%}{'  OVERLOADED' if plan.overloaded else ''}")
    if plan.shed_at_arrival:
        click.echo("  admission sheds at arrival: the front door refuses (503 over_capacity) a "
                   "prompt its queue cannot finish within the SLO")
    if plan.orphans_keep_model:
        click.echo(f"  orphans   light work queued for {names[c.heavy]} stays on it (its heavy "
                   "queue) instead of moving to the new light model")
    click.echo(f"  solver    {plan.solver}, {plan.solve_ms:.1f} ms"
               + (f"  ({plan.note})" if plan.note else ""))


# -- hadis plan replay ----------------------------------------------------------------------

@dataclass(frozen=True)
class Replayed:
    """One recorded period planned again: the recorded and the replayed decision."""

    plan_id: int
    t: float | None
    recorded: Plan
    replayed: Plan | None
    error: str = ""

    @property
    def differs(self) -> bool:
        return self.replayed is None or decision(self.recorded) != decision(self.replayed)

    def to_dict(self) -> dict:
        return {"plan_id": self.plan_id, "t": self.t, "recorded": describe(self.recorded),
                "replayed": describe(self.replayed) if self.replayed else None,
                "differs": self.differs, "error": self.error}


def decision(plan: Plan) -> tuple:
    """What a plan decides: the configuration (pair, router and discriminator ratios), the
    workers per queue and the batch size per model (not its notes, timings or solver)."""
    c = plan.config
    return ((c.light, c.heavy), round(c.router_ratio, 9), round(c.disc_ratio, 9),
            tuple(sorted((q, n) for q, n in plan.workers.items() if n)),
            tuple(sorted(plan.batch.items())))


def describe(plan: Plan) -> str:
    c = plan.config
    workers = ",".join(f"{q}={n}" for q, n in sorted(plan.workers.items()) if n)
    batch = ",".join(f"{m}:{b}" for m, b in sorted(plan.batch.items()))
    return (f"{c.light}->{c.heavy} r={c.router_ratio:g} d={c.disc_ratio:g} "
            f"[{workers}] batch {batch}")


def runs_of(rows: Sequence) -> list[list]:
    """Recorded plans (id order, with inputs) split into runs: a run goes on while each
    plan's recorded previous plan is the plan before it (a restarted beat that resumed its
    state continues its run); its id is its first plan's."""
    out: list[list] = []
    for r in rows:
        prev = (r.inputs or {}).get("previous_id")
        if out and prev is not None and prev == out[-1][-1].id:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def _when(text: str, what: str) -> float:
    """Epoch seconds of ``text``: a number, or an ISO date-time (naive: local time)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(f"{what} {text!r}: expected epoch seconds or an ISO "
                                 "date-time such as 2026-12-06T10:15", param_hint="--run"
                                 ) from None


def select_run(rows: Sequence, spec: str | None) -> tuple[list, str]:
    """The recorded plans ``--run`` names (rows with inputs, id order), and how to say it:
    ``last`` (default; the latest run), a run id (the run holding that plan), ``A..B``
    (plan ids, either end may be left out) or ``SINCE/UNTIL`` (times, either may be left
    out). Raises ``click.ClickException`` for an unknown or empty one."""
    if not rows:
        raise click.ClickException(
            "no plan in this database has recorded inputs (the beat stores them with each "
            "plan since migration 0005; run the stack, then replay)")
    spec = (spec or "last").strip()
    if spec == "last":
        run = runs_of(rows)[-1]
        return run, f"run {run[0].id} (the latest)"
    if spec.isdigit():
        want = int(spec)
        for run in runs_of(rows):
            if any(r.id == want for r in run):
                return run, f"run {run[0].id}"
        raise click.ClickException(
            f"no recorded plan {want} (plans with inputs: {rows[0].id}..{rows[-1].id})")
    if ".." in spec:
        lo, _, hi = spec.partition("..")
        try:
            a = int(lo) if lo.strip() else -math.inf
            b = int(hi) if hi.strip() else math.inf
        except ValueError:
            raise click.BadParameter(f"{spec!r}: expected plan ids FIRST..LAST",
                                     param_hint="--run") from None
        picked = [r for r in rows if a <= r.id <= b]
        where = f"plans {spec}"
    elif "/" in spec:
        lo, _, hi = spec.partition("/")
        a = _when(lo, "since") if lo.strip() else -math.inf
        b = _when(hi, "until") if hi.strip() else math.inf
        picked = [r for r in rows if a <= float(r.inputs["beat"]["t"]) <= b]
        where = f"plans made in {spec}"
    else:
        raise click.BadParameter(f"{spec!r}: expected last, a run id, FIRST..LAST (plan ids) "
                                 "or SINCE/UNTIL (times)", param_hint="--run")
    if not picked:
        raise click.ClickException(
            f"no recorded plan in {where} (plans with inputs: {rows[0].id}..{rows[-1].id})")
    return picked, where


def replay_rows(rows: Sequence, table: Sequence, registry, *, lookup: Mapping[int, Plan],
                solver: str | None = None) -> list[Replayed]:
    """Plan every recorded row again: its inputs over ``table``, the recorded previous plan
    (``lookup``: plan id -> Plan) with the memory that went in, a planner built as the beat
    built it (name, solver, options), fresh for every period (planners keep nothing)."""
    out = []
    for r in rows:
        recorded = Plan.from_dict(r.body)
        inputs = r.inputs
        t = (inputs.get("beat") or {}).get("t")
        prev = lookup.get(inputs.get("previous_id"))
        if prev is not None:
            prev = replace(prev, memory=dict(inputs.get("memory") or {}))
        spec = inputs.get("planner") or {}
        try:
            planner = make_planner(spec.get("name") or r.planner,
                                   solver=solver or spec.get("solver") or "highs",
                                   **dict(spec.get("options") or {}))
            again = planner.plan(state_from_inputs(inputs, table, registry, prev))
            out.append(Replayed(r.id, t, recorded, again))
        except (PlannerInputError, SolverUnavailable, ValueError, TypeError) as exc:
            out.append(Replayed(r.id, t, recorded, None, error=str(exc)))
    return out


@command.command("replay")
@click.option("--run", "run_spec", default=None, metavar="RUN",
              help="last (default), a run id, FIRST..LAST plan ids, or SINCE/UNTIL times "
                   "(epoch seconds or ISO; either end may be left out).")
@click.option("--url", default=None, metavar="URL",
              help="Database URL (default: hadis plan's --url, then settings).")
@click.option("--solver", type=click.Choice(list(SOLVERS)), default=None,
              help="MILP solver (default: the one each plan was made with).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def replay(ctx: click.Context, run_spec: str | None, url: str | None, solver: str | None,
           as_json: bool) -> None:
    """Replay a recorded run's planner inputs through the planner, offline: per period the
    recorded and the replayed decision, flagged where they differ, and a summary line."""
    from sqlalchemy import select

    from hadis_celery import db
    from hadis_celery.tables import PlanRow

    opts = ctx.obj or {}
    url = url or opts.get("url")
    try:
        engine = db.make_engine(db.database_url(url))
        db.ensure_schema(engine)
        with db.transaction(engine) as s:
            rows = [r for r in s.scalars(select(PlanRow).where(PlanRow.inputs.is_not(None))
                                         .order_by(PlanRow.id)) if r.inputs]
            picked, where = select_run(rows, run_spec)
            want = {r.inputs.get("previous_id") for r in picked} - {None}
            lookup = {r.id: Plan.from_dict(r.body) for r in s.scalars(
                select(PlanRow).where(PlanRow.id.in_(want)))}
        engine.dispose()
    except click.ClickException:
        raise
    except Exception as exc:  # unreachable or foreign database
        raise click.ClickException(f"database {url or 'from settings'}: {exc}") from None
    table, registry, source = load_profile(opts.get("profile"), opts.get("version"), url)
    sizes = {(r.inputs.get("table") or {}).get("rows") for r in picked} - {None}
    if sizes and sizes != {len(table)}:
        click.echo(f"warning: the run was planned over a table of {sorted(sizes)} rows, "
                   f"replaying over {source} ({len(table)} rows); pass --profile",
                   err=True)
    out = replay_rows(picked, table, registry, lookup=lookup, solver=solver)
    differ = sum(r.differs for r in out)
    summary = f"{len(out)} plans replayed, {differ} differ ({where}, over {source})"
    if as_json:
        click.echo(json.dumps({"where": where, "profile": source, "replayed": len(out),
                               "differ": differ, "plans": [r.to_dict() for r in out]},
                              allow_nan=False))
        return
    for r in out:
        if r.differs:
            click.echo(f"plan {r.plan_id:>6}  DIFFERS  recorded {describe(r.recorded)}")
            click.echo(f"{'':22s}replayed {describe(r.replayed) if r.replayed else r.error}")
        else:
            click.echo(f"plan {r.plan_id:>6}  same     recorded {describe(r.recorded)}"
                       " = replayed")
    click.echo(summary)
