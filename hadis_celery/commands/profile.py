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
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from planner.cascade import CascadeConfig
from planner.profiler import (
    GRID,
    default_pairs,
    grid_table,
    measure_latency,
    score_prompts,
    with_latency,
)
from planner.reference import ReferenceDataError, read_prompts
from planner.reference_table import HYBRID_CSV, ProfileDataError, load_reference_table, load_scores
from planner.registry import Registry
from planner.table import METRICS, ProfileTable, ProfileTableError, score_quantiles

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
    from planner.router import FeatureExtractor, HardnessRouter, RouterProfile

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
              default=None, help="Prompt set of the score files (default: PROFILE_DIR/../"
              "prompts/ holding the deployment's prompt file name, else the deployment's "
              "[table] prompts).")
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
    """Build the table from a profile folder in the artifact's layout and store it (one
    transaction). The models are the deployment's (``HADIS_DEPLOYMENT``): the CSV's model
    ids are their ids, any number of models with any names; a model whose batch-latency
    curve the deployment does not declare takes its batch-1 seconds from the CSV's latency
    column."""
    from hadis_celery import tables
    from hadis_celery.db import transaction
    from hadis_celery.deployment import DeploymentError, import_registry
    from hadis_celery.settings import settings
    from planner.router.profile import RouterProfile, RouterProfileError

    try:
        if not profile_dir.is_dir():
            raise ProfileDataError(f"{profile_dir}: no such profile folder")
        registry, dep_prompts = import_registry(profile_dir)
        prompts_path = prompts_path or _default_prompts(profile_dir, dep_prompts)
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
        used = {m for c in rows for m in c.pair}
        table = ProfileTable(
            name=name, registry=Registry(tuple(m for m in registry if m.id in used)),
            rows=tuple(rows), metric="fid",
            source=(f"{profile_dir / HYBRID_CSV}; {profile_dir}/scores_model_K.txt "
                    f"(K={','.join(map(str, sorted(scores)))}); {prompts_path} "
                    "(paper artifact Tung-I/diffserve-2)"),
            score_quantiles=score_quantiles({m: v for m, v in scores.items() if m in used}),
            meta={"n_prompts": len(prompts),
                  "router_profile": None if rp is None else _shown(rp_path),
                  "router_weights": None if rp is None else list(rp.weights),
                  "router_scores": rscores is not None,
                  "tau_rule": "reject score < tau; tau splits the lowest disc_ratio share of "
                  + ("the prompts that run light" if rscores is not None else "all prompts"),
                  "latency": "registry batch-1 seconds (planner.registry batch assumption)"},
        )
    except (*_DATA_ERRORS, RouterProfileError, DeploymentError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    engine = _engine(url)
    try:
        with transaction(engine) as session:
            if rp is not None:
                rrow = tables.save_router_profile(session, name, rp.to_dict())
                table = replace(table, meta={**table.meta, "router_profile_id": rrow.id})
            stored = tables.save_profile(session, table)
            version, n_pareto = stored.version, sum(r.pareto for r in stored.rows)
    except _db_errors() as exc:
        raise click.ClickException(f"database: {_one_line(exc)} (nothing stored)") from exc
    finally:
        engine.dispose()
    click.echo(f"imported {name} version {version}: {len(rows)} rows, {n_pareto} on the "
               f"Pareto front (fid vs GPU-seconds per query per model)")


def _default_prompts(profile_dir: Path, dep_prompts: Path | None) -> Path:
    """The prompt file beside the profile folder with the deployment's prompt file name,
    else the deployment's prompt file itself."""
    if dep_prompts is None:
        raise ProfileDataError(f"{profile_dir}: which prompts were scored? pass --prompts "
                               "(or declare [table] prompts in the deployment file)")
    beside = profile_dir.parent / "prompts" / dep_prompts.name
    return beside if beside.is_file() else dep_prompts


# -- run ---------------------------------------------------------------------------------
def _parse_models(text: str, registry: Registry, at_least: int = 2) -> list[int]:
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
    if len(set(out)) < at_least:
        raise click.BadParameter("need at least two distinct models to form a cascade",
                                 param_hint="--models")
    return list(dict.fromkeys(out))


@command.command("run")
@click.option("--deployment", "deployment_file", default=None, metavar="FILE",
              help="The deployment file whose models are profiled (default: "
              "HADIS_DEPLOYMENT, else the packaged example).")
@click.option("--models", "models_text", default=None,
              help="Model ids or names, e.g. 0,1,3 (default: the deployment's planned models).")
@click.option("--prompts", "prompts_path", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="One prompt a line (default: the deployment's [table] prompts).")
@click.option("--limit", type=click.IntRange(2), default=200, show_default=True,
              help="Profile on the first N prompts.")
@click.option("--reference-images", "reference_dir", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder of real images: generate images and build the table on FID "
              "against them (metric fid). Without it: discriminator scores only (metric disc).")
@click.option("--k", "k", type=click.IntRange(1), default=1, show_default=True,
              help="Images per prompt (seeds seed + i*k + j), each a query of its own.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--inception", "inception_path", default=None, envvar="HADIS_INCEPTION",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Feature network for FID: the TorchScript inception-2015-12-05.pt "
              "(clean-fid's), env HADIS_INCEPTION.")
@click.option("--clip-score", "clip_score_path", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="Local CLIP folder for the CLIP score (default: the discriminator's CLIP "
              "folder).")
@click.option("--latency-only", is_flag=True,
              help="Measure the batch-latency curves only (no images, no table).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Image cache, curves and plots (default: var/profile/NAME).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: the backend's).")
@click.option("--name", default=None, help="Profile name (default: run-<models>).")
@click.option("--backend", type=click.Choice(["replay", "tiny", "diffusers"]), default=None,
              help="Override every model's backend (default: the registry's).")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Registry JSON (a list of ModelSpec dicts; default: the "
              "deployment's models).")
@click.option("--batch-sizes", default="1,2,4", show_default=True)
@click.option("--runs", "--repeats", "repeats", type=click.IntRange(1), default=3,
              show_default=True, help="Timed batches per batch size (the median is kept).")
@click.option("--time-factor", type=float, default=None,
              help="replay backend: sleep this share of the profiled time.")
@click.option("--router-profile", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--discriminator", "head_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Discriminator head file (default: the deployment's, per "
              "model; needed for backends that record no scores: tiny, diffusers).")
@click.option("--clip", "clip_path", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="The discriminator's CLIP folder (default: the one the head "
              "records).")
@url_option
def run(deployment_file: str | None, models_text: str | None, prompts_path: Path | None,
        limit: int, reference_dir: Path | None, k: int, seed: int, inception_path: Path | None,
        clip_score_path: Path | None, latency_only: bool, out_dir: Path | None,
        device: str | None, name: str | None, backend: str | None, registry_path: Path | None,
        batch_sizes: str, repeats: int, time_factor: float | None, router_profile: Path | None,
        head_path: Path | None, clip_path: Path | None, url: str | None) -> None:
    """Profile live backends: latency per batch size, then the cascade grid.

    Per model: warm-up, then the median of --runs timed batches per batch size (the curve is
    stored in the table's registry; the planner uses it). With --reference-images: k images
    per prompt (cached on disk by model, prompt and seed: a rerun resumes), each image's
    discriminator and CLIP score and Inception features, then per pair and grid point the
    FID of the served image mix against the reference images (torchmetrics) and its mean
    CLIP score: metric fid. Without: the mean discriminator score of the served images
    (metric disc; the fid column holds 1 - score). --latency-only stops after the curves.
    """
    from hadis_celery.deployment import deployment
    from hadis_celery.settings import settings
    from planner.router.profile import RouterProfile, RouterProfileError

    s = settings()
    if deployment_file is not None:
        s = replace(s, deployment=deployment_file)
    try:
        dep = deployment(s)
        registry = (Registry.from_list(json.loads(registry_path.read_text()))
                    if registry_path else dep.planned)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        what = f"{registry_path}: bad registry" if registry_path else "deployment"
        raise click.ClickException(f"{what} ({_one_line(exc)})") from exc
    if models_text:
        ids = _parse_models(models_text, registry, at_least=1 if latency_only else 2)
    else:
        ids = registry.ids()
        if len(ids) < (1 if latency_only else 2):
            raise click.BadParameter("the deployment plans fewer than two models",
                                     param_hint="--models")
    try:
        sizes = sorted({int(b) for b in batch_sizes.replace(",", " ").split()})
    except ValueError as exc:
        raise click.BadParameter(f"not integers: {batch_sizes!r}",
                                 param_hint="--batch-sizes") from exc
    if not sizes or sizes[0] < 1:
        raise click.BadParameter("batch sizes must be positive", param_hint="--batch-sizes")
    prompts_path = prompts_path or dep.prompts
    if prompts_path is None:
        raise click.BadParameter("which prompts? pass --prompts FILE (or declare [table] "
                                 "prompts in the deployment file)", param_hint="--prompts")
    try:
        prompts = [p for p in read_prompts(prompts_path) if p.strip()][:limit]
        rp_path = router_profile or s.router_profile
        rp = None if latency_only else RouterProfile.load(rp_path)
    except (ReferenceDataError, RouterProfileError) as exc:
        raise click.ClickException(str(exc)) from exc
    if len(prompts) < 2:
        raise click.ClickException(f"{prompts_path}: need at least 2 prompts, got {len(prompts)}")
    try:
        from workers.backends import load_backend
        from workers.errors import WorkerError
    except ImportError as exc:
        raise click.ClickException(f"model backends unavailable: {exc}") from exc
    specs = {m: _profiling_spec(registry.get(m), sizes, backend) for m in ids}
    name = name or "run-" + "-".join(map(str, ids))
    out_dir = out_dir or Path("var") / "profile" / name
    mode = "latency" if latency_only else ("fid" if reference_dir is not None else "disc")
    heads = {} if mode == "latency" else _heads(dep, specs, head_path, clip_path)
    metrics = _metrics(reference_dir, inception_path, clip_score_path, heads, device
                       ) if mode == "fid" else None
    rs = None if mode == "latency" else router_scores(rp_path, s.concreteness, prompts)

    from workers.profiling import ImageCache

    cache = ImageCache(out_dir / "images")
    measured: dict[int, object] = {}
    scores: dict[int, np.ndarray] = {}
    images: dict[int, object] = {}
    for mid in ids:
        spec = specs[mid]
        options: dict = {}
        if time_factor is not None and spec.backend == "replay":
            options["time_factor"] = time_factor
        if device is not None and spec.backend != "replay":
            options["device"] = device
        try:
            be = load_backend(spec, **options)
            be.warmup()
            with _progress(len(sizes) * (repeats + 1), f"latency {spec.name}", "batch") as bar:
                lat = measure_latency(be, prompts, sizes, repeats=repeats, warmup=1,
                                      progress=bar.update)
            if mode == "disc":
                with _progress(len(prompts), f"scores {spec.name}", "prompt") as bar:
                    scores[mid] = score_prompts(be, prompts, max(sizes), _disc_fn(heads, spec),
                                                progress=bar.update)
            elif mode == "fid":
                with _progress(len(prompts) * k, f"images {spec.name}", "image") as bar:
                    images[mid] = cache.generate(be, spec, prompts, k, max(sizes), seed,
                                                 progress=bar.update)
            be.unload()
        except (WorkerError, ValueError, ImportError, OSError) as exc:
            raise click.ClickException(f"model {spec.name}: {_one_line(exc)}") from exc
        measured[mid] = with_latency(spec, lat)
    run_registry = Registry(tuple(measured[m] for m in ids))
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {m.name: {str(b): s_ for b, s_ in sorted(m.latency.items())} for m in run_registry}
    (out_dir / "latency.json").write_text(json.dumps(
        {"device": _device_name(device), "batch_sizes": sizes, "runs": repeats,
         "seconds_per_batch": curves}, indent=1))
    plot_latency(run_registry, out_dir / "latency.png", _device_name(device))
    for m in run_registry:
        click.echo(f"{m.name}: " + ", ".join(f"b{b}={v:.3g}s" for b, v in
                                             sorted(m.latency.items())))
    if mode == "latency":
        click.echo(f"latency curves (median of {repeats} runs, seconds per batch) written to "
                   f"{out_dir / 'latency.json'} and {out_dir / 'latency.png'}; for the "
                   "deployment file:")
        for m in run_registry:
            body = ", ".join(f'"{b}" = {v:.4g}' for b, v in sorted(m.latency.items()))
            click.echo(f"  {m.name}: latency = {{ {body} }}")
        return
    if mode == "fid":
        table, extra = _fid_table(name, run_registry, prompts, prompts_path, rs, rp, rp_path,
                                  images, metrics, heads, k, seed, sizes, repeats, dep, device)
    else:
        rows = grid_table(scores, rs, run_registry, theta_fn=rp.threshold_for)
        table = ProfileTable(
            name=name, registry=run_registry, rows=tuple(rows), metric="disc",
            source=f"hadis profile run: {prompts_path} (first {len(prompts)} prompts), "
            f"backends {', '.join(f'{m.name}={m.backend}' for m in run_registry)}",
            score_quantiles=score_quantiles(scores),
            meta={"n_prompts": len(prompts), "router_profile": _shown(rp_path),
                  "batch_sizes": sizes, "repeats": repeats, "time_factor": time_factor},
        )
        extra = {m: f"mean disc. score {scores[m].mean():.4f}" for m in ids}
    version = _store(table, url)
    union, _ = table.pareto_flags()
    plot_table(replace(table, version=version), union, out_dir / "pareto.png")
    for m in run_registry:
        click.echo(f"{m.name}: {extra[m.id]}")
    click.echo(f"plots: {out_dir / 'latency.png'}, {out_dir / 'pareto.png'}")
    click.echo(f"stored {name} version {version}: {len(table.rows)} rows, "
               f"{sum(union)} on the Pareto front, metric {table.metric} "
               f"({METRICS[table.metric]})")


def _profiling_spec(spec, sizes: Sequence[int], backend: str | None):
    """The registry entry with every profiled batch size (placeholder seconds where the
    registry has none: the backend accepts batches up to its largest registered size; the
    measured curve replaces them)."""
    if backend:
        spec = replace(spec, backend=backend)
    b1 = spec.latency_b1 if math.isfinite(spec.latency_b1) else 1.0
    return replace(spec, latency={
        b: spec.latency.get(b, b1 * b) if math.isfinite(spec.latency.get(b, b1)) else b1 * b
        for b in sorted(set(sizes) | set(spec.latency))})


def _heads(dep, specs: dict, head_path: Path | None, clip_path: Path | None) -> dict:
    """Per model: (head file, CLIP folder) of the discriminator scoring its images, or None
    for backends that record their own scores (replay)."""
    from workers.backends import is_replay

    out, missing = {}, []
    for mid, spec in specs.items():
        if is_replay(spec.backend):
            out[mid] = None
            continue
        declared = dep.discriminator_for(spec.name)
        head = head_path or (declared.head if declared else None)
        clip = clip_path or (declared.clip if declared and head_path is None else None)
        if head is None:
            missing.append(spec.backend)
        out[mid] = (head, clip)
    if missing:
        raise click.ClickException(
            f"the {', '.join(sorted(set(missing)))} backend records no scores; pass "
            "--discriminator HEAD_FILE (a head saved by the discriminator training) or declare "
            "[discriminator] head in the deployment file")
    return out


_DISCS: dict[tuple, object] = {}


def _discriminator(head: Path, clip: Path | None, device: str | None = None):
    from workers.discriminator import Discriminator
    from workers.errors import WorkerError

    key = (str(head), str(clip), device)
    if key not in _DISCS:
        try:
            _DISCS[key] = Discriminator.load(head, clip, **(
                {"device": device} if device else {}))
        except WorkerError as exc:
            raise click.ClickException(f"discriminator: {_one_line(exc)}") from exc
    return _DISCS[key]


def _disc_fn(heads: dict, spec, device: str | None = None):
    """Quality scores of a model's images (None: the backend records them)."""
    pair = heads.get(spec.id)
    if pair is None:
        return None

    def score(images, texts):
        return [x.quality for x in _discriminator(*pair, device).score(images, texts)]

    return score


def _metrics(reference_dir: Path, inception: Path | None, clip_score: Path | None,
             heads: dict, device: str | None) -> dict:
    """FID feature network, CLIP scorer and reference images, checked before any image is
    generated (a missing file stops the run at once, naming it and how to get it)."""
    from workers.device import resolve_device
    from workers.quality import (
        ClipScorer,
        MetricSetupError,
        inception_howto,
        load_feature_extractor,
        reference_images,
    )

    if inception is None:
        from workers.quality import INCEPTION_FILE

        raise click.ClickException("FID needs the Inception network: pass --inception FILE "
                                   f"(or set HADIS_INCEPTION); "
                                   f"{inception_howto(Path(INCEPTION_FILE))}")
    if clip_score is None:
        clip_score = next((c for h in heads.values() if h is not None
                           for c in [h[1] or _head_clip(h[0])] if c is not None), None)
    if clip_score is None:
        raise click.ClickException("the CLIP score needs a local CLIP folder: pass "
                                   "--clip-score DIR (" + _clip_howto() + ")")
    dev = str(resolve_device(device or "auto"))
    try:
        refs = reference_images(reference_dir)
        features = load_feature_extractor(inception, dev)
        clip = ClipScorer(clip_score, dev)
    except MetricSetupError as exc:
        raise click.ClickException(str(exc)) from exc
    return {"refs": refs, "features": features, "clip": clip, "inception": inception,
            "clip_path": clip_score, "reference_dir": reference_dir, "device": dev}


def _clip_howto() -> str:
    from workers.quality import CLIP_HOWTO

    return CLIP_HOWTO


def _head_clip(head: Path) -> Path | None:
    """The CLIP folder a head file records, when it is a folder (not a test's tiny CLIP)."""
    from workers.discriminator import load_head
    from workers.errors import WorkerError

    try:
        _, meta = load_head(head)
    except WorkerError:
        return None
    src = meta.get("clip") or {}
    return Path(src["path"]) if src.get("kind") == "path" else None


def _sha256(path: Path, n: int = 16) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchmetrics", "diffusers", "transformers", "numpy", "hadis-celery"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _device_name(device: str | None) -> str:
    import torch

    from workers.device import resolve_device

    dev = resolve_device(device or "auto")
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({dev})"
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _fid_table(name, registry, prompts, prompts_path, rs, rp, rp_path, images, metrics, heads,
               k, seed, sizes, repeats, dep, device):
    """Score every image, then FID and mean CLIP score of every grid point's image mix."""
    import hashlib
    from datetime import UTC, datetime

    from planner.profiler import grid_points, served_mean
    from workers.profiling import score_images
    from workers.quality import FidScorer, MetricSetupError, open_images

    ids = registry.ids()
    disc, clip, feats = {}, {}, {}
    try:
        for m in ids:
            spec, imgs = registry.get(m), images[m]
            scorers = {"disc": _disc_fn(heads, spec, metrics["device"]), "clip": metrics["clip"]}
            with _progress(len(imgs.paths), f"scoring {spec.name}", "image") as bar:
                vals, f = score_images(imgs.paths, imgs.texts, scorers, metrics["features"],
                                       progress=bar.update)
            disc[m], clip[m], feats[m] = vals["disc"], vals["clip"], f
        refs = metrics["refs"]
        ref_feats = []
        with _progress(len(refs), "reference features", "image") as bar:
            for i in range(0, len(refs), 64):
                ref_feats.append(metrics["features"](open_images(refs[i:i + 64])))
                bar.update(len(refs[i:i + 64]))
        scorer = FidScorer(np.concatenate(ref_feats))
    except (MetricSetupError, ValueError, OSError) as exc:
        raise click.ClickException(_one_line(exc)) from exc
    memo: dict[bytes, float] = {}

    def fid_fn(pair, served):
        key = pair[0].to_bytes(4, "little") + pair[1].to_bytes(4, "little") + served.tobytes()
        if key not in memo:
            light, heavy = pair
            mix = np.where((served == light)[:, None], feats[light], feats[heavy])
            memo[key] = scorer(mix)
        return memo[key]

    pairs = default_pairs(registry, ids)
    n_points = len(pairs) * len(GRID) ** 2
    with _progress(n_points, "FID per grid point", "point") as bar:
        def counted(pair, served):
            bar.update(1)
            return fid_fn(pair, served)

        rows = grid_table(disc, rs, registry, pairs, theta_fn=rp.threshold_for, fid_fn=counted,
                          images_per_prompt=k)
    clip_rows = [served_mean(clip, p.served) for p in grid_points(disc, rs, pairs,
                                                                    images_per_prompt=k)]
    alone = {m: scorer(feats[m]) for m in ids}
    prompt_bytes = "\n".join(prompts).encode("utf-8")
    models_meta = {}
    extra = {}
    for m in registry:
        imgs = images[m.id]
        models_meta[m.name] = {
            "latency": {str(b): v for b, v in sorted(m.latency.items())},
            "fid_alone": alone[m.id], "mean_disc": float(disc[m.id].mean()),
            "mean_clip_score": float(clip[m.id].mean()),
            "images": len(imgs.paths), "generated": imgs.generated, "cached": imgs.cached,
            "discriminator": None if heads.get(m.id) is None else _shown(heads[m.id][0]),
            "params": imgs.params}
        extra[m.id] = (f"FID alone {alone[m.id]:.3f}, mean CLIP score {clip[m.id].mean():.2f}, "
                       f"mean disc. score {disc[m.id].mean():.4f}; images: {imgs.generated} "
                       f"generated, {imgs.cached} cached")
    n_ref = len(metrics["refs"])
    meta = {
        "n_prompts": len(prompts), "k": k, "seed": seed, "seeds": "seed + i*k + j",
        "prompts": _shown(prompts_path),
        "prompts_sha1": hashlib.sha1(prompt_bytes).hexdigest()[:16],
        "deployment": dep.name if dep.path is None else f"{dep.name} ({_shown(dep.path)})",
        "reference_images": _shown(metrics["reference_dir"]), "n_reference_images": n_ref,
        "fid": f"torchmetrics FrechetInceptionDistance on {metrics['features'].source} "
               f"(sha256 {_sha256(Path(metrics['inception']))}), images resized to 299 "
               "bicubic; served mix of each grid point vs the reference images",
        "clip_score_model": _shown(Path(metrics["clip_path"])),
        "clip_score": clip_rows,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "libraries": _versions(), "device": _device_name(device),
        "batch_sizes": list(sizes), "runs": repeats,
        "latency": "measured: median seconds per batch of --runs timed batches after one "
                   "warm-up batch per size",
        "router_profile": _shown(rp_path), "tau_rule": "reject score < tau; tau splits the "
        "lowest disc_ratio share of the light images of the prompts that run light",
        "models": models_meta,
    }
    table = ProfileTable(
        name=name, registry=registry, rows=tuple(rows), metric="fid",
        source=(f"hadis profile run: {len(prompts)} prompts of {_shown(prompts_path)} x {k} "
                f"images, FID vs {n_ref} images in {_shown(metrics['reference_dir'])}, "
                f"deployment {dep.name}"),
        score_quantiles=score_quantiles(disc), meta=meta)
    return table, extra


def _store(table: ProfileTable, url: str | None) -> int:
    from hadis_celery import tables
    from hadis_celery.db import transaction

    engine = _engine(url)
    try:
        with transaction(engine) as session:
            return tables.save_profile(session, table).version
    except _db_errors() as exc:
        raise click.ClickException(f"database: {_one_line(exc)} (nothing stored)") from exc
    finally:
        engine.dispose()


def plot_latency(registry: Registry, out: Path, device: str = "") -> None:
    """Measured batch-latency curves: seconds per batch and per image against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for m in registry:
        bs = sorted(m.latency)
        a.plot(bs, [m.latency[x] for x in bs], "-o", ms=3, label=m.name)
        b.plot(bs, [m.latency[x] / x for x in bs], "-o", ms=3, label=m.name)
    for ax, what in ((a, "seconds per batch"), (b, "seconds per image")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    fig.suptitle(f"measured batch latency (median){' on ' + device if device else ''}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# -- list / show -------------------------------------------------------------------------
@command.command("list")
@url_option
def list_(url: str | None) -> None:
    """Stored profiles, every version."""
    from hadis_celery import tables
    from hadis_celery.db import transaction

    engine = _engine(url)
    try:
        with transaction(engine) as session:
            items = tables.list_profiles(session)
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
    from hadis_celery import tables
    from hadis_celery.db import transaction

    engine = _engine(url)
    try:
        with transaction(engine) as session:
            prof = tables.get_profile(session, name, version)
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


def format_rows(table: ProfileTable, rows: Sequence[CascadeConfig],
                clip: Sequence[float] | None = None) -> str:
    """The rows as a text table; ``clip``: each row's mean CLIP score (a profile built from
    images keeps them in its meta)."""
    qname = "fid" if table.metric == "fid" else "1-disc"
    ids = table.registry.ids()
    head = (f"{'pair':>5} {'r':>4} {'d':>4} {'theta':>8} {'tau':>9} {'light':>5} "
            f"{'direct':>6} {'rerout':>6} {'svc_s':>7} "
            + " ".join(f"{'gpu' + str(m):>7}" for m in ids) + f" {qname:>7} {'quality':>8}"
            + (f" {'clip':>6}" if clip is not None else ""))
    lines = [head]
    for i, c in enumerate(rows):
        g = c.gpu_s_per_query()
        lines.append(
            f"{c.light}:{c.heavy:<3} {c.router_ratio:>4.2f} {c.disc_ratio:>4.2f} "
            f"{_fmt(c.theta, '.4g'):>8} {_fmt(c.tau, '.3g'):>9} {c.frac_light:>5.2f} "
            f"{c.frac_direct:>6.2f} {c.frac_rerouted:>6.2f} {c.service_s:>7.3f} "
            + " ".join(f"{g.get(m, 0.0):>7.3f}" for m in ids)
            + f" {c.fid:>7.3f} {_fmt(c.quality, '.4f'):>8}"
            + (f" {clip[i]:>6.2f}" if clip is not None else ""))
    return "\n".join(lines)


def row_clip_scores(table: ProfileTable) -> list[float] | None:
    """Each row's mean CLIP score, when the profile was built from images."""
    clip = table.meta.get("clip_score") if isinstance(table.meta, dict) else None
    if not isinstance(clip, list) or len(clip) != len(table.rows):
        return None
    return [float(x) for x in clip]


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
    keep = [i for i, (p, _) in enumerate(flags) if p or not pareto]
    rows = [table.rows[i] for i in keep]
    clip = row_clip_scores(table)
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
               f"metric {table.metric} (quality column: {qname}); source: {table.source}")
    click.echo(format_rows(table, rows, None if clip is None else [clip[i] for i in keep]))
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
