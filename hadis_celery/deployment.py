"""The deployment file: what runs, declared once, read by every process of the stack.

One TOML file (``HADIS_DEPLOYMENT=FILE``; schema in ``docs/deployment.md``) declares each
model (name, queue, backend, local weights, generation and memory settings, batch-latency
curve, whether it is planned), the discriminators, the router profile, the configuration
table (a JSON file, an artifact-layout profile folder, or ``sql:NAME``) and the image
store. This module is the single resolver: it validates the file (every error names the
field, e.g. ``models[1].pipeline.guidance_scale``), refuses models whose backend cannot
load, and aligns the table with the declared models (by name), so that no plan ever names
a model that is not deployed and planned. Without a file, the packaged example
``sd35-replay`` (the reference profile's four models in replay) is the deployment.
"""

from __future__ import annotations

import functools
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hadis_celery.settings import Settings, settings
from planner.registry import (
    BATCH_SIZES,
    ModelSpec,
    PipelineSettings,
    Registry,
    affine_batch_latency,
)
from planner.table import ProfileTable

CONTROL_QUEUE = "hadis_control"  # the beat's planner and sweeper tasks
FORMAT = 1
EXAMPLES = Path(__file__).resolve().parent / "examples"
DATA = Path(__file__).resolve().parent / "data"
DEFAULT_EXAMPLE = "sd35-replay"
KNOWN_BACKENDS = ("replay", "tiny", "diffusers")


class DeploymentError(ValueError):
    """A deployment file is unusable; the message names the file and the field at fault."""


# -- the schema (pydantic, strict: TOML values are typed, so "2" is not a number) ----------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Number = Annotated[float, Field(strict=False)]  # an int is a number too
PositiveInt = Annotated[int, Field(gt=0)]


class PipelineEntry(_Strict):
    steps: PositiveInt | None = None
    guidance_scale: Number | None = Field(default=None, ge=0)
    dtype: Literal["fp32", "fp16", "bf16"] | None = None
    scheduler: str | None = None
    scheduler_options: dict[str, Any] = Field(default_factory=dict)
    resolution: PositiveInt | None = None
    height: PositiveInt | None = None
    width: PositiveInt | None = None
    negative_prompt: str | None = None
    call_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("height", "width", "resolution")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            raise ValueError(f"expected a multiple of 8, got {v}")
        return v


class MemoryEntry(_Strict):
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    vae_slicing: bool = False
    vae_tiling: bool = False
    compile: bool = False


class DiscriminatorEntry(_Strict):
    head: str
    clip: str | None = None  # default: the CLIP folder the head records


class ModelEntry(_Strict):
    name: str = Field(min_length=1)
    queue: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    id: Annotated[int, Field(ge=0)] | None = None
    backend: str = "replay"
    path: str | None = None
    plan: bool = True
    latency: dict[str, Annotated[float, Field(strict=False, gt=0)]] | None = None
    latency_b1: Annotated[float, Field(strict=False, gt=0)] | None = None
    batch_sizes: list[PositiveInt] | None = None
    swap_s: Annotated[float, Field(strict=False, ge=0)] | None = None
    pipeline: PipelineEntry = Field(default_factory=PipelineEntry)
    memory: MemoryEntry = Field(default_factory=MemoryEntry)
    discriminator: DiscriminatorEntry | None = None

    @field_validator("latency")
    @classmethod
    def _batch_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k in v or {}:
            if not k.isdigit() or int(k) < 1:
                raise ValueError(f"batch sizes must be positive integers, got {k!r}")
        return v


class TableEntry(_Strict):
    source: str = Field(min_length=1)  # JSON file, artifact-layout folder, or sql:NAME
    version: PositiveInt | None = None  # for sql:NAME (default: the latest)
    profile_dir: str | None = None  # artifact layout for the simulator (scores per prompt)
    prompts: str | None = None  # the prompt set the score files were made from


class RouterEntry(_Strict):
    profile: str
    lexicon: str | None = None


class ImagesEntry(_Strict):
    store: str


class DeploymentFile(_Strict):
    format: Literal[1] = 1
    name: str = Field(min_length=1)
    check_weights: bool = True
    table: TableEntry
    router: RouterEntry
    images: ImagesEntry | None = None
    discriminator: DiscriminatorEntry | None = None
    models: list[ModelEntry] = Field(min_length=1)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "constrained-", "literal[")):
            out += ("." if out else "") + str(part)
    return out or "(file)"


def _describe(err: Mapping) -> str:
    msg, kind, got = err["msg"], err["type"], err.get("input")
    expected = {"float_type": "a number", "float_parsing": "a number", "int_type": "an integer",
                "string_type": "a string", "bool_type": "true or false",
                "dict_type": "a table", "list_type": "a list", "missing": None,
                "extra_forbidden": None, "model_type": "a table"}
    if kind in expected and expected[kind]:
        return f"expected {expected[kind]}, got {got!r}"
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        return "unknown field (see docs/deployment.md for the schema)"
    msg = msg.removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:] if msg else kind
    return f"{msg}, got {got!r}" if kind.startswith(("literal", "greater", "less", "too_",
                                                     "string_pattern")) else msg


def parse(data: Mapping, where: str = "deployment") -> DeploymentFile:
    """Validate the file's data; every problem is listed with the field that has it."""
    try:
        return DeploymentFile.model_validate(dict(data))
    except ValidationError as exc:
        lines = [f"{_loc(e['loc'])}: {_describe(e)}" for e in exc.errors()]
        raise DeploymentError(f"{where}: " + "; ".join(lines)) from None


# -- the resolved deployment -----------------------------------------------------------------
@dataclass(frozen=True)
class Discriminator:
    head: Path
    clip: Path | None = None


@dataclass(frozen=True)
class Deployment:
    """A validated deployment file with its paths resolved (relative paths: against the
    file's folder; ``{data}``, ``{examples}``, ``{reference}`` placeholders; ``~``)."""

    name: str
    path: Path | None
    models: tuple[ModelSpec, ...]  # every declared model, planned or not, in file order
    table_source: str
    table_version: int | None
    router_profile: Path
    lexicon: Path | None = None
    image_store: str | None = None
    profile_dir: Path | None = None
    prompts: Path | None = None
    discriminator: Discriminator | None = None
    discriminators: Mapping[str, Discriminator] = field(default_factory=dict)  # by model name
    declared_latency: frozenset[str] = frozenset()  # names whose curve the file declares
    check_weights: bool = True

    @property
    def registry(self) -> Registry:
        """Every declared model (the import registry: CSV model ids are these ids)."""
        return Registry(self.models)

    @property
    def planned(self) -> Registry:
        return Registry(tuple(m for m in self.models if m.plan))

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r} in deployment {self.name}")

    def discriminator_for(self, name: str) -> Discriminator | None:
        """The discriminator that scores ``name``'s images as the light model."""
        return self.discriminators.get(name, self.discriminator)

    def with_overrides(self, backend: str = "", model_paths: Mapping[str, str] | None = None
                       ) -> Deployment:
        """``HADIS_BACKEND`` / ``HADIS_MODEL_PATHS`` applied (by queue suffix)."""
        paths = dict(model_paths or {})
        unknown = set(paths) - {m.queue for m in self.models}
        if unknown:
            raise DeploymentError(f"HADIS_MODEL_PATHS names unknown models {sorted(unknown)} "
                                  f"(deployment {self.name} has "
                                  f"{sorted(m.queue for m in self.models)})")
        if not backend and not paths:
            return self
        return replace(self, models=tuple(
            replace(m, backend=backend or m.backend, path=paths.get(m.queue, m.path))
            for m in self.models))

    def check_servable(self) -> None:
        """Refuse a planned model whose backend cannot load (fix: weights, or plan = false)."""
        problems = []
        for i, m in enumerate(self.models):
            if not m.plan:
                continue
            where = f"models[{i}] ({m.name})"
            fix = (f"set models[{i}].path to a local diffusers folder (save_pretrained), or "
                   f"plan = false to leave it out of planning")
            if m.backend not in KNOWN_BACKENDS and ":" not in m.backend:
                problems.append(f"{where}: unknown backend {m.backend!r} (one of "
                                f"{', '.join(KNOWN_BACKENDS)}, or package.module:ClassName)")
            elif m.backend == "diffusers" and not m.path:
                problems.append(f"{where}: the diffusers backend needs a weights path; {fix}")
            elif m.backend == "diffusers" and self.check_weights:
                p = Path(m.path).expanduser()
                if not (p / "model_index.json").is_file():
                    what = "does not exist" if not p.exists() else (
                        "is not a diffusers pipeline folder (no model_index.json)")
                    problems.append(f"{where}: weights path {p} {what}; {fix}")
        if problems:
            raise DeploymentError(f"deployment {self.name}"
                                  + (f" ({self.path})" if self.path else "") + ": "
                                  + "; ".join(problems))


def _placeholders() -> dict[str, str]:
    from planner.reference import reference_dir

    return {"{data}": str(DATA), "{examples}": str(EXAMPLES), "{reference}": str(reference_dir())}


def _resolve(text: str | None, base: Path) -> Path | None:
    if text is None:
        return None
    for key, value in _placeholders().items():
        text = text.replace(key, value)
    p = Path(text).expanduser()
    return p if p.is_absolute() else (base / p)


def _resolve_source(text: str, base: Path) -> str:
    return text if text.startswith("sql:") else str(_resolve(text, base))


def _resolve_store(text: str, base: Path) -> str:
    """An fsspec URL as it is, a folder resolved like any path."""
    from hadis_celery.imagestore import is_url

    return text if is_url(text) else str(_resolve(text, base))


def _spec(i: int, e: ModelEntry, base: Path) -> tuple[ModelSpec, bool]:
    where = f"models[{i}]"
    p = e.pipeline
    if e.latency and e.latency_b1 is not None:
        raise DeploymentError(f"{where}: declare either latency or latency_b1, not both")
    if e.latency:
        latency = {int(b): float(s) for b, s in e.latency.items()}
        if e.batch_sizes:
            raise DeploymentError(f"{where}.batch_sizes: only with latency_b1 (latency lists "
                                  "its batch sizes itself)")
    elif e.latency_b1 is not None:
        latency = affine_batch_latency(e.latency_b1, tuple(sorted(set(e.batch_sizes or
                                                                      BATCH_SIZES))))
    else:
        latency = {}  # taken from the table (see align) or the profile's latency column
    res = p.resolution or max(p.height or 0, p.width or 0) or 1024
    pipeline = PipelineSettings(
        guidance_scale=p.guidance_scale, dtype=p.dtype, scheduler=p.scheduler,
        scheduler_options=dict(p.scheduler_options), height=p.height, width=p.width,
        negative_prompt=p.negative_prompt, cpu_offload=e.memory.cpu_offload,
        vae_slicing=e.memory.vae_slicing, vae_tiling=e.memory.vae_tiling,
        compile=e.memory.compile, call_options=dict(p.call_options))
    path = _resolve(e.path, base)
    kwargs = dict(id=i if e.id is None else e.id, name=e.name, queue=e.queue,
                  backend=e.backend, steps=p.steps or 50, resolution=res, latency=latency,
                  path=None if path is None else str(path), pipeline=pipeline, plan=e.plan,
                  swap_s=e.swap_s)
    declared = bool(e.latency) or e.latency_b1 is not None
    try:
        spec = ModelSpec(**kwargs) if declared else _undeclared(kwargs)
    except ValueError as exc:
        raise DeploymentError(f"{where}: {exc}") from None
    return spec, declared


def _undeclared(kwargs: dict) -> ModelSpec:
    """A spec whose latency the table will give (ModelSpec refuses an infinite one)."""
    spec = ModelSpec(**{**kwargs, "latency": {1: 1.0}})
    return replace_latency(spec, {1: math.inf})


def replace_latency(spec: ModelSpec, latency: Mapping[int, float]) -> ModelSpec:
    """``spec`` with another latency curve, without re-running the positivity check (used
    only for the not-yet-known placeholder)."""
    new = replace(spec, latency={1: 1.0})
    object.__setattr__(new, "latency", dict(latency))
    return new


def from_dict(data: Mapping, base: Path, path: Path | None = None) -> Deployment:
    """A ``Deployment`` from the file's parsed TOML (``base``: folder for relative paths)."""
    where = str(path) if path else "deployment"
    f = parse(data, where)
    specs, declared = [], set()
    for i, e in enumerate(f.models):
        try:
            spec, d = _spec(i, e, base)
        except DeploymentError as exc:
            raise DeploymentError(f"{where}: {exc}") from None
        specs.append(spec)
        if d:
            declared.add(spec.name)
    for key in ("id", "name", "queue"):
        seen: dict = {}
        for i, s in enumerate(specs):
            v = getattr(s, key)
            if v in seen:
                raise DeploymentError(f"{where}: models[{i}].{key}: {v!r} is already used by "
                                      f"models[{seen[v]}]")
            seen[v] = i
    discs = {}
    for e in f.models:
        if e.discriminator is not None:
            discs[e.name] = Discriminator(_resolve(e.discriminator.head, base),
                                          _resolve(e.discriminator.clip, base))
    default_disc = None if f.discriminator is None else Discriminator(
        _resolve(f.discriminator.head, base), _resolve(f.discriminator.clip, base))
    return Deployment(
        name=f.name, path=path, models=tuple(specs),
        table_source=_resolve_source(f.table.source, base), table_version=f.table.version,
        router_profile=_resolve(f.router.profile, base),
        lexicon=_resolve(f.router.lexicon, base),
        image_store=None if f.images is None else _resolve_store(f.images.store, base),
        profile_dir=_resolve(f.table.profile_dir, base), prompts=_resolve(f.table.prompts, base),
        discriminator=default_disc, discriminators=discs, declared_latency=frozenset(declared),
        check_weights=f.check_weights)


def example_path(name: str) -> Path:
    """A packaged example deployment by name (``sd35-replay``, ``sdxl-lightning-sd35``)."""
    p = EXAMPLES / f"{name}.toml"
    if not p.is_file():
        have = sorted(x.stem for x in EXAMPLES.glob("*.toml"))
        raise DeploymentError(f"no packaged example {name!r} (have {', '.join(have)})")
    return p


def deployment_path(text: str) -> Path:
    """A file path, or the name of a packaged example."""
    if text and not text.endswith(".toml") and "/" not in text and not Path(text).exists():
        return example_path(text)
    return Path(text) if text else example_path(DEFAULT_EXAMPLE)


def load(path: str | os.PathLike[str]) -> Deployment:
    """Read and validate a deployment file (or a packaged example's name)."""
    p = deployment_path(str(path))
    return _load(str(p.resolve()), p.stat().st_mtime_ns if p.exists() else 0)


@functools.lru_cache(maxsize=16)
def _load(path: str, _mtime: int) -> Deployment:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeploymentError(f"{p}: deployment file not found") from None
    except OSError as exc:
        raise DeploymentError(f"{p}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeploymentError(f"{p}: not TOML ({exc})") from None
    return from_dict(data, p.parent, p)


def settings_defaults(path: str) -> dict[str, Any]:
    """The ``Settings`` fields a deployment file sets (``Settings`` fills those whose
    variable is unset): table, router profile, lexicon, image store, discriminator head."""
    d = load(path)
    out: dict[str, Any] = {"profile": d.table_source, "router_profile": d.router_profile}
    if d.lexicon is not None:
        out["concreteness"] = d.lexicon
    if d.image_store is not None:
        from hadis_celery.imagestore import is_url

        if is_url(d.image_store):
            out["image_store"] = d.image_store
        else:
            out["image_dir"] = Path(d.image_store)
    if d.discriminator is not None:
        out["disc_head"] = d.discriminator.head
    return out


# -- the table, aligned with the deployment -----------------------------------------------------
def read_table(source: str, registry: Registry, *, version: int | None = None,
               database_url: str | None = None, router_profile: Path | None = None
               ) -> ProfileTable:
    """The table at ``source``: ``sql:NAME``, a JSON file, or an artifact-layout folder
    (``config_results_hybrid.csv`` + ``scores_model_K.txt``, model ids of ``registry``)."""
    from planner.reference_table import ProfileDataError
    from planner.table import ProfileTableError

    try:
        if source.startswith("sql:"):
            return _sql_table(source[4:], version, database_url)
        p = Path(source)
        if p.is_dir():
            return _folder_table(p, registry, router_profile)
        return ProfileTable.load(p)
    except (ProfileDataError, ProfileTableError) as exc:
        raise DeploymentError(str(exc)) from None


def _sql_table(name: str, version: int | None, url: str | None) -> ProfileTable:
    from sqlalchemy.exc import SQLAlchemyError

    from hadis_celery import db, tables

    engine = db.make_engine(url)
    which = f"version {version} of " if version is not None else ""
    try:
        with db.transaction(engine) as s:
            row = tables.get_profile(s, name, version)
            if row is None:
                raise DeploymentError(f"no profile {which}{name!r} in {db.database_url(url)} "
                                      "(see hadis profile list)")
            return row.to_table()
    except SQLAlchemyError as exc:
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise DeploymentError(f"no profile {which}{name!r}: database {db.database_url(url)}: "
                              f"{text[0] if text else type(exc).__name__}") from None
    finally:
        engine.dispose()


def table_for(profile: str | None, version: int | None = None, url: str | None = None,
              s: Settings | None = None) -> tuple[ProfileTable, str]:
    """(table, where it came from) for a CLI's ``--profile``: a JSON file, an artifact
    folder, a stored profile name (or ``sql:NAME``); ``None`` is the deployment's table.
    A name the database does not hold that is the deployment's own table's name means that
    table (e.g. ``sd35`` for the packaged example on an empty database). Every table comes
    aligned with the deployment (its registry: the deployed, planned models)."""
    s = s or settings()
    d = deployment(s)
    rp = Path(s.router_profile)
    origin = (f"packaged example {d.name}" if d.path and d.path.parent == EXAMPLES
              else f"deployment {d.name}")
    if profile is None:
        return load_table(s), f"{origin}: {s.profile}"
    p = Path(profile)
    if p.exists():
        kind = "folder" if p.is_dir() else "file"
        return align(read_table(str(p), d.registry, router_profile=rp), d), f"{kind} {p}"
    name = profile.removeprefix("sql:")
    try:
        t = _sql_table(name, version, url or s.database_url)
        return align(t, d), f"SQL profile {t.name} v{t.version}"
    except DeploymentError as exc:
        own = load_table(s)
        if name != own.name or version is not None:
            raise
        return own, f"{origin}: {s.profile} ({exc})"


def _folder_table(folder: Path, registry: Registry, router_profile: Path | None
                  ) -> ProfileTable:
    from planner.reference_table import csv_latencies, load_reference_table, read_hybrid_csv

    rp = None
    if router_profile is not None and Path(router_profile).is_file():
        from planner.router.profile import RouterProfile

        rp = RouterProfile.load(router_profile)
    registry = with_csv_latencies(registry, csv_latencies(
        read_hybrid_csv(folder / "config_results_hybrid.csv", registry)))
    rows = load_reference_table(folder, registry, rp)
    used = {m for c in rows for m in c.pair}
    return ProfileTable(name=folder.name, registry=Registry(tuple(
        m for m in registry if m.id in used)), rows=tuple(rows), source=str(folder))


def import_registry(profile_dir: Path, s: Settings | None = None
                    ) -> tuple[Registry, Path | None]:
    """The registry a profile folder is imported with (every declared model; the CSV's
    model ids are theirs; undeclared curves from the CSV's latency column), and the
    deployment's prompt file. Weights are not checked: importing serves nothing."""
    from planner.reference_table import HYBRID_CSV, csv_latencies, read_hybrid_csv

    s = s or settings()
    d = load(s.deployment or DEFAULT_EXAMPLE)
    rows = read_hybrid_csv(Path(profile_dir) / HYBRID_CSV, d.registry)
    used = {m for r in rows for m in (r["light"], r["heavy"])}
    reg = Registry(tuple(m for m in d.registry if m.id in used))
    return with_csv_latencies(reg, csv_latencies(rows)), d.prompts


def with_csv_latencies(registry: Registry, measured: Mapping[int, float]) -> Registry:
    """Models without a declared curve take the CSV's batch-1 latency (affine curve)."""
    out = []
    for m in registry:
        if not math.isfinite(m.latency_b1):
            if m.id not in measured:
                raise DeploymentError(
                    f"model {m.name}: no batch-latency curve declared (latency or latency_b1) "
                    "and the profile's latency column does not give one")
            m = replace_latency(m, affine_batch_latency(measured[m.id]))
        out.append(m)
    return Registry(tuple(out))


def align(table: ProfileTable, dep: Deployment) -> ProfileTable:
    """The table as the deployment serves it: models matched by name; registry = the
    deployed, planned models (declared curves win, else the table's); rows naming any other
    model dropped; per-row seconds recomputed from the deployment's batch-1 latencies."""
    from planner.reference_table import expected_service_s

    by_name = {m.name: m for m in dep.models}
    planned_ids, id_map, reg = set(), {}, []
    for tm in table.registry:
        dm = by_name.get(tm.name)
        if dm is None or not dm.plan:
            continue
        if not math.isfinite(dm.latency_b1):
            dm = replace_latency(dm, dict(tm.latency))
        id_map[tm.id] = dm.id
        planned_ids.add(dm.id)
        reg.append(dm)
    missing = [m.name for m in dep.models if m.plan and m.name not in {r.name for r in reg}]
    rows = []
    for c in table.rows:
        if c.light not in id_map or c.heavy not in id_map:
            continue
        light, heavy = id_map[c.light], id_map[c.heavy]
        ls = next(m for m in reg if m.id == light).latency_b1
        hs = next(m for m in reg if m.id == heavy).latency_b1
        rows.append(replace(c, light=light, heavy=heavy, light_s=ls, heavy_s=hs,
                            service_s=expected_service_s(ls, hs, c.router_ratio, c.disc_ratio)
                            if c.light != c.heavy else c.service_s))
    if not rows:
        raise DeploymentError(
            f"deployment {dep.name}: table {table.name!r} has no row whose models are both "
            f"deployed and planned (table models: {[m.name for m in table.registry]}; "
            f"planned: {[m.name for m in dep.models if m.plan]})")
    meta = dict(table.meta)
    if missing:
        meta["deployment_note"] = f"planned models the table never names: {missing}"
    quantiles = {id_map[m]: q for m, q in table.score_quantiles.items() if m in id_map}
    return replace(table, registry=Registry(tuple(sorted(reg, key=lambda m: m.id))),
                   rows=tuple(rows), score_quantiles=quantiles, meta=meta)


# -- what every process calls -------------------------------------------------------------------
def parse_model_paths(text: str) -> dict[str, str]:
    """``"fast=/models/fast,big=/models/big"`` -> ``{queue suffix: folder}``."""
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"HADIS_MODEL_PATHS: expected queue=path items, got {item!r}")
        out[name.strip()] = path.strip()
    return out


def deployment(s: Settings | None = None) -> Deployment:
    """The process's deployment (``HADIS_DEPLOYMENT``, else the packaged ``sd35-replay``),
    with ``HADIS_BACKEND``/``HADIS_MODEL_PATHS`` applied and servability checked."""
    s = s or settings()
    d = load(s.deployment or DEFAULT_EXAMPLE)
    d = d.with_overrides(s.backend, parse_model_paths(s.model_paths))
    d.check_servable()
    return d


@functools.lru_cache(maxsize=8)
def _table(dep: str, profile: str, backend: str, database_url: str, model_paths: str,
           router_profile: str) -> ProfileTable:
    d = load(dep).with_overrides(backend, parse_model_paths(model_paths))
    d.check_servable()
    version = d.table_version if profile == d.table_source else None
    table = read_table(profile, d.registry, version=version, database_url=database_url,
                       router_profile=Path(router_profile))
    return align(table, d)


def load_table(s: Settings | None = None) -> ProfileTable:
    """The configuration table the deployment names (``HADIS_PROFILE`` overrides it), its
    registry the deployment's planned models. Raises ``DeploymentError`` (a ValueError)."""
    s = s or settings()
    return _table(s.deployment or DEFAULT_EXAMPLE, str(s.profile), s.backend, s.database_url,
                  s.model_paths, str(s.router_profile))


def registry(s: Settings | None = None) -> Registry:
    return load_table(s).registry


def model_queues(reg: Registry) -> list[str]:
    """Every model's queues: ``light_<m>`` (generate, then discriminate), ``heavy_<m>``."""
    return [q for m in reg for q in (m.light_queue, m.heavy_queue)]


@functools.lru_cache(maxsize=4)
def _router(profile: str, lexicon: str):
    from planner.router import HardnessRouter

    return HardnessRouter.from_paths(profile, lexicon or None)


def load_router(s: Settings | None = None):
    """The process's ``HardnessRouter`` (spaCy loads once: about 4 s)."""
    s = s or settings()
    return _router(str(s.router_profile), str(s.concreteness or ""))
