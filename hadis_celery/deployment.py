"""The deployment as every process of the stack sees it: the configuration table, its model
registry (the one source of queue names), and the router, loaded once per process."""

from __future__ import annotations

import functools
from dataclasses import replace

from hadis_celery.settings import Settings, settings
from planner.registry import Registry
from planner.table import ProfileTable

CONTROL_QUEUE = "hadis_control"  # the beat's planner and sweeper tasks


def parse_model_paths(text: str) -> dict[str, str]:
    """``"sdxl=/models/sdxl,sd35_large=/models/sd35l"`` -> ``{queue suffix: folder}``."""
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"HADIS_MODEL_PATHS: expected queue=path items, got {item!r}")
        out[name.strip()] = path.strip()
    return out


@functools.lru_cache(maxsize=8)
def _table(profile: str, backend: str, database_url: str, model_paths: str = ""
           ) -> ProfileTable:
    if profile.startswith("sql:"):
        from hadis_celery import db, models

        name = profile[4:]
        engine = db.make_engine(database_url)
        try:
            with db.transaction(engine) as s:
                row = models.get_profile(s, name)
                if row is None:
                    raise ValueError(f"no profile named {name!r} in {database_url}")
                table = row.to_table()
        finally:
            engine.dispose()
    else:
        table = ProfileTable.load(profile)
    paths = parse_model_paths(model_paths)
    unknown = set(paths) - {m.queue for m in table.registry}
    if unknown:
        raise ValueError(f"HADIS_MODEL_PATHS names unknown models {sorted(unknown)}")
    if backend or paths:
        reg = Registry(tuple(replace(m, backend=backend or m.backend,
                                     path=paths.get(m.queue, m.path))
                             for m in table.registry))
        table = replace(table, registry=reg)
    return table


def load_table(s: Settings | None = None) -> ProfileTable:
    """The configuration table named by ``HADIS_PROFILE`` (packaged sd35 by default), with
    every model's backend replaced by ``HADIS_BACKEND`` and weights folders taken from
    ``HADIS_MODEL_PATHS`` when those are set."""
    s = s or settings()
    return _table(str(s.profile), s.backend, s.database_url, s.model_paths)


def registry(s: Settings | None = None) -> Registry:
    return load_table(s).registry


def model_queues(reg: Registry) -> list[str]:
    """Every model's queues: ``light_<m>`` (generate, then discriminate), ``heavy_<m>``."""
    return [q for m in reg for q in (m.light_queue, m.heavy_queue)]


@functools.lru_cache(maxsize=4)
def _router(profile: str, lexicon: str):
    from hadis_celery.router import HardnessRouter

    return HardnessRouter.from_paths(profile, lexicon or None)


def load_router(s: Settings | None = None):
    """The process's ``HardnessRouter`` (spaCy loads once: about 4 s)."""
    s = s or settings()
    return _router(str(s.router_profile), str(s.concreteness or ""))
