"""``hadis experiment NAME --out DIR``: the paper's experiments in the simulator, on the
deployment's models (``HADIS_DEPLOYMENT``) and its ``[table] profile_dir``; a baseline the
table cannot support is reported as not run, with the reason."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hadis_celery.scenario import default_scenario
from planner.reference import ReferenceDataError
from sim.experiments import EXPERIMENTS, REFUSED, run_experiment
from sim.report import markdown_table


@click.command("experiment")
@click.argument("name", type=click.Choice(sorted(EXPERIMENTS)))
@click.option("--out", type=click.Path(file_okay=False), default="out/experiments",
              show_default=True, help="Folder for CSV, PNG and markdown outputs.")
@click.option("--workers", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--slo", "slo_s", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Latency SLO in seconds.")
@click.option("--trace", default=None,
              help="Trace file name under ../shared/reference/traces (default 1-to-20 qps).")
@click.option("--seed", type=int, default=0, show_default=True)
def command(name: str, out: str, workers: int, slo_s: float, trace: str | None,
            seed: int) -> None:
    """Run one of the paper's experiments on the simulated cluster."""
    from tqdm import tqdm

    bar = tqdm(desc=name, unit="run", file=sys.stderr)

    def progress(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    try:
        sc = default_scenario(workers=workers, slo_s=slo_s, seed=seed)
        rows = run_experiment(name, Path(out), sc, trace=trace, progress=progress)
    except (ReferenceDataError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        bar.close()
    cols = ["policy", "fid", "slo_violation_ratio", "served", "late", "dropped"]
    if rows and "slo_multiplier" in rows[0]:
        cols.insert(0, "slo_multiplier")
    click.echo(markdown_table(rows, cols))
    for policy, why in sorted(REFUSED.items()):
        click.echo(f"{policy}: not run: {why}")
    click.echo(f"outputs in {out}/")
