"""``hadis replay``: drive a live front door with a trace, open loop, and write the same
report as the simulator (SLO violation ratio, FID estimate, time series).

Arrivals are sent at their trace time x ``--time-scale`` (K); the stack should run K times
slower than the profile too (``hadis up --time-factor K --slo 60K ...``: see
``docs/testbed.md``), and every figure is reported in profile time (wall / K), so the
report reads like ``hadis experiment``'s for the same trace.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import click


def _trace_path(text: str) -> Path:
    """A trace file, or the name of one under the reference ``traces/`` folder."""
    from planner.reference import reference_dir

    p = Path(text)
    if p.is_file():
        return p
    ref = reference_dir() / "traces" / text
    for cand in (ref, ref.with_suffix(".txt")):
        if cand.is_file():
            return cand
    raise click.BadParameter(f"{text}: no such trace file", param_hint="--trace")


@click.command("replay")
@click.option("--trace", "trace_arg", required=True,
              help="Trace file (arrival_ms,prompt_index lines), or a name under the "
                   "reference traces/ folder, e.g. azure_multi_1to20qps.")
@click.option("--prompts", "prompts_arg", default=None, type=click.Path(dir_okay=False),
              help="Prompt file the trace indexes (default: the deployment's [table] prompts).")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True,
              help="Base URL of the front door.")
@click.option("--time-scale", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Wall seconds per trace second (K): arrivals at t x K.")
@click.option("--start", "start_s", type=click.FloatRange(min=0), default=0.0,
              show_default=True, help="Replay from this trace second.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Replay this many trace seconds (default: to the end).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Replay at most this many arrivals.")
@click.option("--slo", "slo_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="SLO per request in trace (profile) seconds, sent as slo_s = SLO x K "
                   "(default: the stack's own default).")
@click.option("--threads", type=click.IntRange(min=1, max=256), default=8, show_default=True,
              help="Concurrent senders (an arrival is late only when all are busy).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=60.0,
              show_default=True,
              help="Wall seconds to wait for open queries after the last deadline.")
@click.option("--grid", default=None, type=click.Path(file_okay=False),
              help="Profiled grid folder for the FID estimate (default: the deployment's "
                   "[table] profile_dir).")
@click.option("--api-key", default=None, envvar="HADIS_API_KEY",
              help="X-API-Key for a front door with keys (or HADIS_API_KEY).")
@click.option("--out", default="out/replay", show_default=True,
              type=click.Path(file_okay=False), help="Folder of the report.")
def command(trace_arg: str, prompts_arg: str | None, url: str, time_scale: float,
            start_s: float, duration_s: float | None, limit: int | None, slo_s: float | None,
            threads: int, wait_s: float, grid: str | None, api_key: str | None,
            out: str) -> None:
    """Replay a trace against a live front door and report like the simulator."""
    from tqdm import tqdm

    from hadis_celery.deployment import deployment, load_table
    from hadis_celery.loadgen import Client, Endpoint, health, replay, select_arrivals
    from planner.reference import ReferenceDataError, read_prompts
    from sim.engine import SimSettings
    from sim.live import grid_surface, live_result, overheads, write_report
    from sim.trace import TraceError, read_trace

    try:
        ep = Endpoint.parse(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    trace_path = _trace_path(trace_arg)
    try:
        dep = deployment()
        registry = load_table().registry
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if prompts_arg is None and dep.prompts is None:
        raise click.ClickException(f"deployment {dep.name} declares no [table] prompts: "
                                   "pass --prompts")
    prompts_path = Path(prompts_arg) if prompts_arg else dep.prompts
    try:
        prompts = read_prompts(prompts_path)
        trace = read_trace(trace_path, n_prompts=len(prompts))
        arrivals = select_arrivals(trace.arrival_s, trace.prompt_index, start_s=start_s,
                                   duration_s=duration_s, limit=limit)
    except (ReferenceDataError, TraceError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if not arrivals:
        raise click.ClickException(f"{trace_path}: no arrivals from {start_s:g} s"
                                   + (f" for {duration_s:g} s" if duration_s else ""))
    client = Client(ep, headers={"X-API-Key": api_key} if api_key else None)
    try:
        status, body = health(client)
    except OSError as exc:
        raise click.ClickException(f"cannot reach the front door at {ep}: {exc}") from None
    if status != 200:
        raise click.ClickException(f"the front door at {ep} is not healthy (HTTP {status}: "
                                   f"{json.dumps(body)[:200]})")
    grid_dir = Path(grid) if grid else dep.profile_dir
    try:
        if grid_dir is None:
            raise ValueError(f"deployment {dep.name} declares no [table] profile_dir; "
                             "pass --grid")
        surface = grid_surface(grid_dir, registry)
    except (ValueError, OSError) as exc:
        click.echo(f"warning: no FID estimate ({exc})", err=True)
        surface = None

    stop = threading.Event()

    def _interrupt(*_):
        if stop.is_set():
            raise KeyboardInterrupt
        click.echo("\ninterrupted: reading what was sent, then writing the report "
                   "(Ctrl-C again to abort)", err=True)
        stop.set()

    old = signal.signal(signal.SIGINT, _interrupt)
    sent_bar = tqdm(total=len(arrivals), desc="sent", unit="q", file=sys.stderr)
    done_bar = tqdm(total=len(arrivals), desc="ended", unit="q", file=sys.stderr)
    try:
        run = replay(client, arrivals, prompts, time_scale=time_scale, threads=threads,
                     slo_s=None if slo_s is None else slo_s * time_scale, wait_s=wait_s,
                     on_sent=sent_bar.update, on_collected=done_bar.update, stop=stop)
    finally:
        sent_bar.close()
        done_bar.close()
        signal.signal(signal.SIGINT, old)
    slos = [r.slo_s for r in run.records if r.slo_s]
    settings = SimSettings(slo_s=(sorted(slos)[len(slos) // 2] / time_scale) if slos else 60.0)
    res = live_result(run.records, run.plans, t0=run.t0, time_scale=time_scale,
                      surface=surface, settings=settings, name="live",
                      model_of_queue=_model_of_queue(registry),
                      fallback=_fallback(surface, registry))
    summary = {**res.summary(), **overheads(run.records), "time_scale": time_scale,
               "t0": run.t0,
               "url": run.endpoint, "trace": str(trace_path), "start_s": start_s,
               "duration_s": duration_s, "arrivals": len(arrivals),
               "http": run.http_counts(), "open_at_end": run.open_at_end,
               "interrupted": run.interrupted, "send_wall_s": round(run.send_wall_s, 2),
               "slo_s": settings.slo_s, "out": str(out)}
    write_report(out, {"live": res}, run.records, time_scale=time_scale, summary=summary,
                 title=f"Live replay of {trace_path.name} at time scale {time_scale:g}",
                 notes=f"Front door {run.endpoint}; HTTP answers {run.http_counts()}; "
                       f"{run.open_at_end} queries still open when the replay stopped "
                       "waiting (counted as dropped).\n")
    click.echo(json.dumps(summary, default=str))


def _fallback(surface, registry) -> tuple[int, float] | None:
    """The stand-in image of a dropped query for ``fid_all`` (None without a surface)."""
    from sim.fid import fallback_model

    if surface is None:
        return None
    try:
        return fallback_model(registry, surface)
    except (KeyError, ValueError):
        return None


def _model_of_queue(registry) -> dict[str, int]:
    """Queue name -> model id of the deployment's planned models."""
    return {q: m.id for m in registry for q in (m.light_queue, m.heavy_queue)}
