"""Retention: what ``hadis db prune`` and the beat's ``hadis.prune`` remove, and why it is safe.

History grows without bound otherwise (a row per query, a plan row per period, an image per
query, and messages of queries that ended while a copy still sat on a list), and the pages
and metrics that read it get slower with it. ``prune`` removes, for a cutoff ``now - age``:

- finished query rows (``done``, ``dropped``, ``failed``) last written before the cutoff, with
  their image files (a file whose row is gone can no longer be served);
- with ``images``: files of the image folder that no row references (left by a crash between
  a row's deletion and its file's, or by hand) and ``.tmp`` leftovers, older than the cutoff;
- with ``plans``: plan rows created before the cutoff, except the active plan (the one
  published in Redis, and the latest row, which a Redis recovery re-publishes) and any plan
  an open query references;
- dead Redis messages: ``hadis.generate`` messages on a model queue whose row is final or
  gone (a worker would skip them; they only cost memory and list scans).

Open rows (``queued``, ``rerouted``, ``running``) are never touched. Rows go before their
files, so an interruption leaves only unreferenced files, which the next ``images`` run
removes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hadis_celery.imagestore import ImageStore

log = logging.getLogger(__name__)

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
CHUNK = 2000  # rows per transaction


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds (``90``, ``3600.0``) or numbers with units
    ``s m h d w`` (``30d``, ``12h``, ``1d12h``, ``90m``). Raises ``ValueError`` with a
    message a user can act on."""
    raw = str(text).strip().lower()
    hint = "use a number with a unit s, m, h, d or w (e.g. 30d, 12h, 1d12h) or plain seconds"
    if not raw:
        raise ValueError(f"an empty duration: {hint}")
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is None:
        pos, total = 0, 0.0
        for m in _PART.finditer(raw.replace(" ", "")):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(raw.replace(" ", "")) or pos == 0:
            raise ValueError(f"{text!r} is not a duration: {hint}")
        value = total
    if not value == value or value < 0 or value == float("inf"):  # NaN, negative, inf
        raise ValueError(f"{text!r} is not a duration: {hint}")
    return value


def prune_period_s(age_s: float) -> float:
    """How often the beat prunes with ``HADIS_PRUNE_AFTER = age_s``: a quarter of the age,
    between 1 s and an hour (history is never more than 25 % past its age)."""
    return min(3600.0, max(1.0, age_s / 4.0))


def format_duration(seconds: float) -> str:
    """``86400`` -> ``1d``; the largest whole unit, else seconds."""
    for unit in ("w", "d", "h", "m"):
        n = seconds / _UNITS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{seconds:g}s"


@dataclass
class PruneReport:
    """What a prune removed (or, with ``dry_run``, would remove)."""

    cutoff: float
    dry_run: bool
    queries: int = 0
    images: int = 0  # files of the pruned rows
    stray_images: int = 0  # unreferenced files and .tmp leftovers (``images``)
    plans: int = 0
    dead_messages: int = 0
    kept_plans: list[int] = field(default_factory=list)
    redis: str = "ok"  # or why the dead messages were not looked at

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def line(self, age: str) -> str:
        verb = "would remove" if self.dry_run else "removed"
        text = (f"{verb} {self.queries} finished queries older than {age} "
                f"({self.images} image files), {self.plans} plans, "
                f"{self.dead_messages} dead messages")
        if self.stray_images:
            text += f", {self.stray_images} unreferenced image files"
        if self.redis != "ok":
            text += f" (Redis not pruned: {self.redis})"
        return text


def prune(engine, age_s: float, *, store: ImageStore | None = None, live=None,
          queues: Sequence[str] = (), images: bool = False, plans: bool = False,
          dry_run: bool = False, now: float | None = None) -> PruneReport:
    """Remove what is older than ``age_s`` (module doc); ``store`` the image store (a local
    folder or an fsspec URL: ``hadis_celery.imagestore``), ``live`` (a ``LiveState``) for
    the dead messages and the active plan, ``queues`` the model queues to look at."""
    from sqlalchemy import delete, select

    from hadis_celery.db import transaction
    from hadis_celery.store import FINAL, OPEN
    from hadis_celery.tables import PlanRow, QueryRow

    if age_s <= 0:
        raise ValueError("the age must be more than 0 s")
    now = time.time() if now is None else now
    cutoff = now - age_s
    rep = PruneReport(cutoff=cutoff, dry_run=dry_run)
    # -- finished queries and their images, in chunks (keyset on the id)
    after = ""
    while True:
        with transaction(engine) as s:
            rows = s.execute(select(QueryRow.id, QueryRow.image)
                             .where(QueryRow.status.in_(FINAL), QueryRow.updated_at < cutoff,
                                    QueryRow.id > after)
                             .order_by(QueryRow.id).limit(CHUNK)).all()
            if not rows:
                break
            after = rows[-1][0]
            ids = [r[0] for r in rows]
            if not dry_run:
                s.execute(delete(QueryRow).where(QueryRow.id.in_(ids),
                                                 QueryRow.status.in_(FINAL))
                          .execution_options(synchronize_session=False))
        rep.queries += len(ids)
        for _, name in rows:
            if name and store is not None:
                if dry_run:
                    rep.images += store.exists(name)
                else:
                    rep.images += store.delete(name)
        if len(rows) < CHUNK:
            break
    # -- plans: keep the active one, the latest, and those open queries reference
    if plans:
        keep: set[int] = set()
        with transaction(engine) as s:
            latest = s.scalar(select(PlanRow.id).order_by(PlanRow.id.desc()).limit(1))
            if latest is not None:
                keep.add(int(latest))
            keep |= {int(p) for p in s.scalars(select(QueryRow.plan_id).distinct().where(
                QueryRow.status.in_(OPEN), QueryRow.plan_id.is_not(None)))}
        if live is not None:
            try:
                active = live.get_plan()
                if active is not None:
                    keep.add(int(active.plan_id))
            except Exception as exc:  # without Redis we cannot tell: keep every recent plan
                rep.redis = f"{type(exc).__name__}"
        rep.kept_plans = sorted(keep)
        old = datetime.fromtimestamp(cutoff, UTC)
        with transaction(engine) as s:
            q = select(PlanRow.id).where(PlanRow.created < old)
            if keep:
                q = q.where(PlanRow.id.not_in(sorted(keep)))
            victims = list(s.scalars(q))
            if victims and not dry_run and rep.redis == "ok":
                for i in range(0, len(victims), CHUNK):
                    s.execute(delete(PlanRow).where(PlanRow.id.in_(victims[i:i + CHUNK]))
                              .execution_options(synchronize_session=False))
        rep.plans = len(victims) if rep.redis == "ok" else 0
    # -- image files nobody references
    if images and store is not None:
        rep.stray_images = _stray_images(engine, store, cutoff, dry_run)
    # -- dead messages
    if live is not None and queues and rep.redis == "ok":
        try:
            rep.dead_messages = _dead_messages(engine, live, queues, dry_run)
        except Exception as exc:
            rep.redis = f"{type(exc).__name__}: {str(exc)[:120]}"
    return rep


def _stray_images(engine, store: ImageStore, cutoff: float, dry_run: bool) -> int:
    from sqlalchemy import select

    from hadis_celery.db import transaction
    from hadis_celery.tables import QueryRow

    n = 0
    candidates = [(name, mtime) for name, mtime in store.entries()
                  if name.endswith((".png", ".tmp"))]
    for i in range(0, len(candidates), CHUNK):
        part = candidates[i:i + CHUNK]
        names = [name for name, _ in part if name.endswith(".png")]
        with transaction(engine) as s:
            known = set(s.scalars(select(QueryRow.image).where(QueryRow.image.in_(names))))
        for name, mtime in part:
            old = mtime is not None and mtime < cutoff
            if old and (name.endswith(".tmp") or name not in known):
                n += 1
                if not dry_run:
                    store.delete(name)
    return n


def _dead_messages(engine, live, queues: Sequence[str], dry_run: bool) -> int:
    """Messages whose row is final or gone (a row exists before its first message, so a
    message without a row belongs to a row that was pruned or never committed)."""
    from sqlalchemy import select

    from hadis_celery.db import transaction
    from hadis_celery.store import OPEN
    from hadis_celery.tables import QueryRow

    n = 0
    for q, msgs in live.messages(queues).items():
        if not msgs:
            continue
        ids = sorted({m.query_id for m in msgs})
        open_ids: set[str] = set()
        for i in range(0, len(ids), CHUNK):
            with transaction(engine) as s:
                open_ids |= set(s.scalars(select(QueryRow.id).where(
                    QueryRow.id.in_(ids[i:i + CHUNK]), QueryRow.status.in_(OPEN))))
        dead = [m for m in msgs if m.query_id not in open_ids]
        n += len(dead)
        if dead and not dry_run:
            live.remove_messages(q, dead)
    return n
