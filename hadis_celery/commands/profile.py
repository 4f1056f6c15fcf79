"""``hadis profile``: build, store and inspect cascade configuration tables.

import   build the table from the reference measurements (one SQL transaction)
run      profile live backends (replay, tiny, diffusers) and build the same table
list     stored profiles and versions
show     one profile's rows (all, or the Pareto front), as text, JSON or a plot
candidates  the model-candidate pruning table of a stored profile
export   write a profile as JSON (the packaged hadis_celery/data/profile_sd35.json)
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from hadis_celery.reference import ReferenceDataError, read_prompts
from planner.cascade import CascadeConfig
from planner.reference_table import HYBRID_CSV, ProfileDataError, load_reference_table, load_scores
from planner.registry import Registry, sd35_registry
from planner.table import METRICS, ProfileTable, ProfileTableError, score_quantiles

PROMPTS_FILE = Path("prompts") / "imagenet1k_captions_5k.txt"
_DATA_ERRORS = (ProfileDataError, ProfileTableError, ReferenceDataError, FileNotFoundError)


def _db_errors() -> tuple[type[Exception], ...]:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError, CommandError)


def _engine(url: str | None):
    """An engine on ``url`` (or the settings' URL) with the schema at head."""
    from hadis_celery import db

    try:
        engine = db.make_engine(url)
        db.ensure_schema(engine)
    except _db_errors() as exc:
        raise click.ClickException(f"database {db.database_url(url)}: {_one_line(exc)}") from exc
    return engine


def _one_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


url_option = click.option(
    "--url", "url", default=None, metavar="URL",
    help="Database URL (default: HADIS_DATABASE_URL, else sqlite:///var/hadis.sqlite).")


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it (for stored text)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _progress(total: int, desc: str, unit: str = "it"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                disable=None if total >= 50 else True)


_SCORE_CACHE: dict[tuple, np.ndarray] = {}


def router_scores(profile_path: Path, lexicon: Path | None, prompts: Sequence[str],
                  chunk: int = 500) -> np.ndarray:
    """Router scores of ``prompts`` (spaCy features; a few seconds per thousand prompts),
    remembered per process for the same profile file, lexicon and prompts."""
    from hadis_celery.router import FeatureExtractor, HardnessRouter, RouterProfile

    p = Path(profile_path)
    key = (str(p.resolve()), p.stat().st_mtime_ns if p.exists() else 0, str(lexicon),
           hash(tuple(prompts)))
    if key in _SCORE_CACHE:
        return _SCORE_CACHE[key].copy()

    router = HardnessRouter(RouterProfile.load(profile_path), FeatureExtractor(lexicon),
                            cache_size=0)
    out = np.zeros(len(prompts))
    with _progress(len(prompts), "router scores", "prompt") as bar:
        for i in range(0, len(prompts), chunk):
            part = list(prompts[i:i + chunk])
            try:
                out[i:i + len(part)] = router.score_many(part)
            except ValueError as exc:  # "prompt K: ..." within the chunk
                raise click.ClickException(f"prompts, chunk from line {i + 1}: {exc}") from exc
            bar.update(len(part))
    _SCORE_CACHE[key] = out.copy()
    return out


@click.group("profile")
def command() -> None:
    """Cascade configuration tables: offline profiles, Pareto pruning, SQL history."""


# -- import ------------------------------------------------------------------------------
@command.command("import")
@click.argument("profile_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Profile name; a re-import adds a version.")
@click.option("--prompts", "prompts_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Prompt set of the score files "
              "(default: PROFILE_DIR/../prompts/imagenet1k_captions_5k.txt).")
@click.option("--router-profile", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Router profile JSON for θ (default: the settings').")
@click.option("--router-scores/--no-router-scores", "use_router_scores", default=True,
              show_default=True,
              help="Score the prompts with the router (spaCy, ~10 s for 5k prompts) so τ is "
              "set on the prompts that run light and the served quality is known.")
@click.option("--no-router", is_flag=True, help="No router at all: θ is NaN.")
@url_option
def import_(profile_dir: Path, name: str, prompts_path: Path | None,
            router_profile: Path | None, use_router_scores: bool, no_router: bool,
            url: str | None) -> None:
    """Build the table from a reference profile folder and store it (one transaction)."""
    from hadis_celery import models
    from hadis_celery.db import transaction
    from hadis_celery.router.profile import RouterProfile, RouterProfileError
    from hadis_celery.settings import settings

    registry = sd35_registry()
    try:
        if not profile_dir.is_dir():
            raise ProfileDataError(f"{profile_dir}: no such profile folder")
        prompts_path = prompts_path or profile_dir.parent / PROMPTS_FILE
        prompts = read_prompts(prompts_path)
        scores = load_scores(profile_dir, n_prompts=len(prompts))
        rp = None
        rscores = None
        if not no_router:
            rp_path = router_profile or settings().router_profile
            rp = RouterProfile.load(rp_path)
            if use_router_scores:
                rscores = router_scores(rp_path, settings().concreteness, prompts)
        rows = load_reference_table(profile_dir, registry, rp, router_scores=rscores,
                                    scores=scores)
        table = ProfileTable(
            name=name, registry=registry, rows=tuple(rows), metric="fid",
            source=(f"{profile_dir / HYBRID_CSV}; {profile_dir}/scores_model_K.txt "
                    f"(K={','.join(map(str, sorted(scores)))}); {prompts_path} "
                    "(paper artifact Tung-I/diffserve-2)"),
            score_quantiles=score_quantiles(scores),
            meta={"n_prompts": len(prompts),
                  "router_profile": None if rp is None else _shown(rp_path),
                  "router_weights": None if rp is None else list(rp.weights),
                  "router_scores": rscores is not None,
                  "tau_rule": "reject score < tau; tau splits the lowest disc_ratio share of "
                  + ("the prompts that run light" if rscores is not None else "all prompts"),
                  "latency": "registry batch-1 seconds (planner.registry batch assumption)"},
        )
    except (*_DATA_ERRORS, RouterProfileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    engine = _engine(url)
    try:
        with transaction(engine) as session:
            if rp is not None:
                rrow = models.save_router_profile(session, name, rp.to_dict())
                table = replace(table, meta={**table.meta, "router_profile_id": rrow.id})
            stored = models.save_profile(session, table)
            version, n_pareto = stored.version, sum(r.pareto for r in stored.rows)
    except _db_errors() as exc:
        raise click.ClickException(f"database: {_one_line(exc)} (nothing stored)") from exc
    finally:
        engine.dispose()
    click.echo(f"imported {name} version {version}: {len(rows)} rows, {n_pareto} on the "
               f"Pareto front (fid vs GPU-seconds per query per model)")


# -- run ---------------------------------------------------------------------------------
def _parse_models(text: str, registry: Registry) -> list[int]:
    out = []
    for part in text.replace(",", " ").split():
        try:
            out.append(registry.get(int(part)).id)
            continue
        except ValueError:
            pass
        except KeyError as exc:
            raise click.BadParameter(str(exc.args[0]), param_hint="--models") from exc
        match = [m.id for m in registry if part in (m.name, m.queue)]
        if not match:
            raise click.BadParameter(
                f"unknown model {part!r} (known: {', '.join(m.name for m in registry)})",
                param_hint="--models")
        out.append(match[0])
    if len(set(out)) < 2:
        raise click.BadParameter("need at least two distinct models to form a cascade",
                                 param_hint="--models")
    return list(dict.fromkeys(out))


@command.command("run")
@click.option("--models", "models_text", required=True, help="Model ids or names, e.g. 0,1,3.")
@click.option("--prompts", "prompts_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="One prompt a line.")
@click.option("--limit", type=click.IntRange(2), default=200, show_default=True,
              help="Profile on the first N prompts.")
@click.option("--name", default=None, help="Profile name (default: run-<models>).")
@click.option("--backend", type=click.Choice(["replay", "tiny", "diffusers"]), default=None,
              help="Override every model's backend (default: the registry's).")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Registry JSON (a list of ModelSpec dicts; default: sd35).")
@click.option("--batch-sizes", default="1,2,4", show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--time-factor", type=float, default=None,
              help="replay backend: sleep this share of the profiled time.")
@click.option("--router-profile", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--discriminator", "head_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Discriminator head file (for backends that record no "
              "scores: tiny, diffusers).")
@click.option("--clip", "clip_path", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Local CLIP folder (default: the one the head records).")
@url_option
def run(models_text: str, prompts_path: Path, limit: int, name: str | None,
        backend: str | None, registry_path: Path | None, batch_sizes: str, repeats: int,
        time_factor: float | None, router_profile: Path | None, head_path: Path | None,
        clip_path: Path | None, url: str | None) -> None:
    """Profile live backends: latency per batch size, per-prompt scores, the cascade grid.

    Quality is the mean discriminator score of the served images (metric "disc"; the
    table's fid column holds 1 - score): FID needs reference images and Inception weights.
    """
    from hadis_celery import models
    from hadis_celery.db import transaction
    from hadis_celery.router.profile import RouterProfile, RouterProfileError
    from hadis_celery.settings import settings
    from planner.profiler import grid_table, measure_latency, score_prompts, with_latency

    try:
        registry = (Registry.from_list(json.loads(registry_path.read_text()))
                    if registry_path else sd35_registry())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(f"{registry_path}: bad registry ({exc})") from exc
    ids = _parse_models(models_text, registry)
    try:
        sizes = sorted({int(b) for b in batch_sizes.replace(",", " ").split()})
    except ValueError as exc:
        raise click.BadParameter(f"not integers: {batch_sizes!r}",
                                 param_hint="--batch-sizes") from exc
    if not sizes or sizes[0] < 1:
        raise click.BadParameter("batch sizes must be positive", param_hint="--batch-sizes")
    try:
        prompts = [p for p in read_prompts(prompts_path) if p.strip()][:limit]
        rp_path = router_profile or settings().router_profile
        rp = RouterProfile.load(rp_path)
    except (ReferenceDataError, RouterProfileError) as exc:
        raise click.ClickException(str(exc)) from exc
    if len(prompts) < 2:
        raise click.ClickException(f"{prompts_path}: need at least 2 prompts, got {len(prompts)}")
    try:
        from workers.backends import load_backend
        from workers.errors import WorkerError
    except ImportError as exc:
        raise click.ClickException(f"model backends unavailable: {exc}") from exc
    kinds = {backend or registry.get(m).backend for m in ids}
    if kinds - {"replay"} and head_path is None:
        raise click.ClickException(
            f"the {', '.join(sorted(kinds - {'replay'}))} backend records no scores; "
            "pass --discriminator HEAD_FILE (a head saved by the discriminator training)")
    rs = router_scores(rp_path, settings().concreteness, prompts)
    disc = None
    measured: dict[int, object] = {}
    scores: dict[int, np.ndarray] = {}
    for mid in ids:
        spec = registry.get(mid)
        if backend:
            spec = replace(spec, backend=backend)
        # placeholder seconds for batch sizes the registry lacks (the backend accepts
        # batches up to its largest registered size); the measured curve replaces them
        spec = replace(spec, latency={b: spec.latency.get(b, spec.latency_b1 * b)
                                      for b in sorted(set(sizes) | set(spec.latency))})
        options = {"time_factor": time_factor} if time_factor is not None and (
            spec.backend == "replay") else {}
        try:
            be = load_backend(spec, **options)
            be.warmup()
            total = len(sizes) * (repeats + 1)
            with _progress(total, f"latency {spec.name}", "batch") as bar:
                lat = measure_latency(be, prompts, sizes, repeats=repeats, warmup=1,
                                      progress=bar.update)

            def score_fn(images, texts):
                nonlocal disc
                if disc is None:
                    from workers.discriminator import Discriminator

                    disc = Discriminator.load(head_path, clip_path)
                return [s.quality for s in disc.score(images, texts)]

            with _progress(len(prompts), f"scores {spec.name}", "prompt") as bar:
                scores[mid] = score_prompts(be, prompts, max(sizes), score_fn,
                                            progress=bar.update)
            be.unload()
        except (WorkerError, ValueError, ImportError, OSError) as exc:
            raise click.ClickException(f"model {spec.name}: {_one_line(exc)}") from exc
        measured[mid] = with_latency(spec, lat)
    run_registry = Registry(tuple(measured[m] for m in ids))
    rows = grid_table(scores, rs, run_registry, theta_fn=rp.threshold_for)
    name = name or "run-" + "-".join(map(str, ids))
    table = ProfileTable(
        name=name, registry=run_registry, rows=tuple(rows), metric="disc",
        source=f"hadis profile run: {prompts_path} (first {len(prompts)} prompts), "
        f"backends {', '.join(f'{m.name}={m.backend}' for m in run_registry)}",
        score_quantiles=score_quantiles(scores),
        meta={"n_prompts": len(prompts), "router_profile": _shown(rp_path),
              "batch_sizes": sizes, "repeats": repeats, "time_factor": time_factor},
    )
    engine = _engine(url)
    try:
        with transaction(engine) as session:
            stored = models.save_profile(session, table)
            version = stored.version
    except _db_errors() as exc:
        raise click.ClickException(f"database: {_one_line(exc)} (nothing stored)") from exc
    finally:
        engine.dispose()
    for m in run_registry:
        curve = ", ".join(f"b{b}={s:.3g}s" for b, s in sorted(m.latency.items()))
        click.echo(f"{m.name}: {curve}; mean disc. score {scores[m.id].mean():.4f}")
    click.echo(f"stored {name} version {version}: {len(rows)} rows, metric disc "
               f"({METRICS['disc']})")


# -- list / show -------------------------------------------------------------------------
@command.command("list")
@url_option
def list_(url: str | None) -> None:
    """Stored profiles, every version."""
    from hadis_celery import models
    from hadis_celery.db import transaction

    engine = _engine(url)
    try:
        with transaction(engine) as session:
            items = models.list_profiles(session)
            lines = [f"{p.name:<20} v{p.version:<3} {p.created:%Y-%m-%d %H:%M:%S}  "
                     f"{n:>5} rows {k:>4} pareto  {p.metric:<4}  {p.source[:60]}"
                     for p, n, k in items]
    except _db_errors() as exc:
        raise click.ClickException(f"database: {_one_line(exc)}") from exc
    finally:
        engine.dispose()
    click.echo("\n".join(lines) if lines else "no profiles stored")


def load_table(name: str, version: int | None, url: str | None) -> tuple[ProfileTable, list]:
    """A stored profile as a ``ProfileTable`` plus its (pareto, pareto_pair) flags."""
    from hadis_celery import models
    from hadis_celery.db import transaction

    engine = _engine(url)
    try:
        with transaction(engine) as session:
            prof = models.get_profile(session, name, version)
            if prof is None:
                which = f"version {version} of " if version is not None else ""
                raise click.ClickException(f"no profile {which}{name!r} (see hadis profile list)")
            return prof.to_table(), [(r.pareto, r.pareto_pair) for r in prof.rows]
    except _db_errors() as exc:
        raise click.ClickException(f"database: {_one_line(exc)}") from exc
    finally:
        engine.dispose()


def plot_table(table: ProfileTable, union_flags: Sequence[bool], out: Path) -> None:
    """Quality against expected latency per pair, like Figure 2 of the HADIS paper: every
    grid point in grey, each pair's quality-latency frontier as a line, and the rows kept by
    the planner's pruning (fid vs GPU-seconds per query per model) in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from planner.pareto import pareto_indices

    pairs = list(dict.fromkeys(c.pair for c in table.rows))
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    names = {m.id: m.name for m in table.registry}
    qname = "FID" if table.metric == "fid" else "1 - mean disc. score"
    for ax, pair in zip(axes.flat, pairs, strict=False):
        idx = [i for i, c in enumerate(table.rows) if c.pair == pair]
        rows = [table.rows[i] for i in idx]
        ax.scatter([c.service_s for c in rows], [c.fid for c in rows], s=9, c="0.75",
                   label="grid point")
        front = sorted((rows[k] for k in pareto_indices(rows, cost="total").kept),
                       key=lambda c: c.service_s)
        ax.plot([c.service_s for c in front], [c.fid for c in front], "-o", ms=3,
                color="tab:blue", label="latency frontier")
        kept = [table.rows[i] for i in idx if union_flags[i]]
        ax.scatter([c.service_s for c in kept], [c.fid for c in kept], s=16, c="tab:red",
                   zorder=3, label="kept (GPU-s per model)")
        ax.set_title(f"{names.get(pair[0], pair[0])} → {names.get(pair[1], pair[1])}",
                     fontsize=9)
        ax.set_xlabel("expected latency per query, batch 1 (s)")
        ax.set_ylabel(qname)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{table.name} v{table.version}: quality against latency per cascade pair")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fmt(x: float, spec: str = ".3g") -> str:
    return f"{x:{spec}}" if math.isfinite(x) else str(x)


def format_rows(table: ProfileTable, rows: Sequence[CascadeConfig]) -> str:
    qname = "fid" if table.metric == "fid" else "1-disc"
    ids = table.registry.ids()
    head = (f"{'pair':>5} {'r':>4} {'d':>4} {'theta':>8} {'tau':>9} {'light':>5} "
            f"{'direct':>6} {'rerout':>6} {'svc_s':>7} "
            + " ".join(f"{'gpu' + str(m):>7}" for m in ids) + f" {qname:>7} {'quality':>8}")
    lines = [head]
    for c in rows:
        g = c.gpu_s_per_query()
        lines.append(
            f"{c.light}:{c.heavy:<3} {c.router_ratio:>4.2f} {c.disc_ratio:>4.2f} "
            f"{_fmt(c.theta, '.4g'):>8} {_fmt(c.tau, '.3g'):>9} {c.frac_light:>5.2f} "
            f"{c.frac_direct:>6.2f} {c.frac_rerouted:>6.2f} {c.service_s:>7.3f} "
            + " ".join(f"{g.get(m, 0.0):>7.3f}" for m in ids)
            + f" {c.fid:>7.3f} {_fmt(c.quality, '.4f'):>8}")
    return "\n".join(lines)


@command.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="Default: the latest.")
@click.option("--pareto", is_flag=True, help="Only the Pareto-optimal rows.")
@click.option("--json", "as_json", is_flag=True, help="JSON (rows with routing fractions).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a quality-vs-latency figure per pair (PNG).")
@url_option
def show(name: str, version: int | None, pareto: bool, as_json: bool, plot: Path | None,
         url: str | None) -> None:
    """One profile: all rows or the Pareto front."""
    table, flags = load_table(name, version, url)
    rows = [c for c, (p, _) in zip(table.rows, flags, strict=True) if p] if pareto else list(
        table.rows)
    if plot is not None:
        plot_table(table, [p for p, _ in flags], plot)
    if as_json:
        d = table.with_rows(rows).to_dict()
        d["pareto_only"] = pareto
        click.echo(json.dumps(d, indent=1, allow_nan=False))
        return
    qname = "FID" if table.metric == "fid" else "1 - mean discriminator score"
    click.echo(f"{table.name} v{table.version} ({table.created}): {len(rows)} of "
               f"{len(table.rows)} rows{' (Pareto front)' if pareto else ''}; "
               f"quality column: {qname}; source: {table.source}")
    click.echo(format_rows(table, rows))
    if plot is not None:
        click.echo(f"plot written to {plot}")


@command.command("candidates")
@click.argument("name")
@click.option("--version", "version", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
@url_option
def candidates(name: str, version: int | None, as_json: bool, url: str | None) -> None:
    """Model-candidate pruning (near-duplicate, dominated, near-segment) of a profile."""
    from planner.candidates import (
        Candidate,
        format_decisions,
        prune_candidates,
        single_model_quality,
    )

    table, _ = load_table(name, version, url)
    quality = single_model_quality(table.rows)
    cands = [Candidate(m.id, m.name, m.latency_b1, quality[m.id])
             for m in table.registry if m.id in quality]
    decisions = prune_candidates(cands)
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in decisions], indent=1))
    else:
        click.echo(format_decisions(decisions))


@command.command("export")
@click.argument("name")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--version", "version", type=int, default=None)
@click.option("--all-rows", is_flag=True, help="Every row, not only the Pareto front.")
@url_option
def export(name: str, out: Path, version: int | None, all_rows: bool, url: str | None) -> None:
    """Write a stored profile as JSON (Pareto rows, registry, score quantiles, source)."""
    table, _ = load_table(name, version, url)
    table.save(out, pareto_only=not all_rows)
    n = len(table.rows) if all_rows else len(table.pareto())
    click.echo(f"wrote {out}: {n} rows of {table.name} v{table.version}")
