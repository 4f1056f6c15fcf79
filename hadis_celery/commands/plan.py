"""``hadis plan``: solve one planning period offline and print the plan.

The table is the deployment's (``HADIS_DEPLOYMENT``; the packaged ``sd35-replay`` when
unset) or ``--profile``: a profile stored in SQL (``hadis profile import``) by name, a
profile folder in the artifact's layout, or a profile JSON file (``hadis profile export``).
A name the database does not hold that is the deployment table's own name means that table.
Every table is aligned with the deployment: only its deployed, planned models are planned.
"""

from __future__ import annotations

import json

import click

from planner.baselines import PLANNERS, make_planner
from planner.plan import PlannerInputError, PlannerState, QueueState
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


@click.command("plan")
@click.option("--profile", default=None,
              help="Stored profile name, profile folder or JSON (default: the deployment's).")
@click.option("--version", "version", type=int, default=None, help="Profile version.")
@click.option("--url", default=None, metavar="URL", help="Database URL (default: settings).")
@click.option("--demand", type=float, required=True, help="Demand λ, queries per second.")
@click.option("--workers", type=int, required=True, help="Worker (GPU) budget S.")
@click.option("--slo", "slo_s", type=float, default=60.0, show_default=True,
              help="Latency SLO, seconds.")
@click.option("--planner", "planner_name", type=click.Choice(list(PLANNERS)), default="hadis",
              show_default=True)
@click.option("--solver", type=click.Choice(list(SOLVERS)), default="gurobi", show_default=True,
              help="MILP solver (gurobi falls back to highs when unlicensed or too large).")
@click.option("--queue", "queue_specs", multiple=True, metavar="QUEUE=LEN[@RATE]",
              help="Current backlog (and arrivals/s) of a queue, e.g. heavy_big=12@0.5.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object.")
def command(profile: str | None, version: int | None, url: str | None, demand: float, workers: int,
            slo_s: float, planner_name: str, solver: str, queue_specs: tuple[str, ...],
            as_json: bool) -> None:
    """Pick the configuration, workers and batch sizes for one demand level."""
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
    click.echo(f"  solver    {plan.solver}, {plan.solve_ms:.1f} ms"
               + (f"  ({plan.note})" if plan.note else ""))
