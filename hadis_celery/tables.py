"""SQL tables (SQLAlchemy 2 declarative) and the small queries that go with them.

SQL is the record: every table the system keeps lives here, on one ``Base`` whose
metadata the Alembic migrations in ``migrations/`` track. To add a table (queries, plans,
worker heartbeats...): declare a class on ``Base`` in a new section below, then write a
revision with ``alembic -c migrations/alembic.ini revision --autogenerate -m "..."``
(``tests/profile/test_db.py`` checks that the migrations and these classes agree).

Floats: NaN is stored as NULL (SQLite cannot hold NaN) and read back as NaN; ±inf are
stored as they are (θ and τ of the degenerate rows), which PostgreSQL and SQLite both keep.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    cast,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from planner.cascade import CascadeConfig
from planner.registry import Registry
from planner.status import QueryStatus
from planner.table import ProfileTable

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Real(TypeDecorator):
    """A double that maps NaN to NULL and back (SQLite turns NaN into NULL anyway)."""

    impl = Float(precision=53)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return float(value)

    def process_result_value(self, value, dialect):
        return math.nan if value is None else float(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- profiles: the cascade configuration tables, with history ------------------------------
class Profile(Base):
    """One imported or measured configuration table; (name, version) is unique, and a new
    import of the same name adds the next version (the latest is the default)."""

    __tablename__ = "profiles"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_profiles_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source: Mapped[str] = mapped_column(Text, default="")
    metric: Mapped[str] = mapped_column(String(16), default="fid")
    # Registry.to_list() snapshot (``registry`` is reserved on declarative classes)
    registry_snapshot: Mapped[list] = mapped_column("registry", JSON)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)  # score quantiles, router, notes
    rows: Mapped[list[ProfileRow]] = relationship(
        back_populates="profile", cascade="all, delete-orphan", order_by="ProfileRow.idx")

    def to_table(self) -> ProfileTable:
        meta = dict(self.meta or {})
        quantiles = {int(m): q for m, q in dict(meta.pop("score_quantiles", {})).items()}
        return ProfileTable(
            name=self.name, registry=Registry.from_list(self.registry_snapshot),
            rows=tuple(r.to_config() for r in self.rows), metric=self.metric,
            source=self.source, score_quantiles=quantiles, meta=meta,
            created=self.created.isoformat(timespec="seconds") if self.created else "",
            version=self.version,
        )


class ProfileRow(Base):
    """One ``CascadeConfig`` of a profile, with its Pareto flags (computed at import)."""

    __tablename__ = "profile_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    profile_id: Mapped[int] = mapped_column(
        ForeignKey("profiles.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)  # row order in the source table
    light: Mapped[int] = mapped_column(Integer)
    heavy: Mapped[int] = mapped_column(Integer)
    router_ratio: Mapped[float] = mapped_column(Real)
    theta: Mapped[float] = mapped_column(Real, nullable=True)
    disc_ratio: Mapped[float] = mapped_column(Real)
    tau: Mapped[float] = mapped_column(Real, nullable=True)
    fid: Mapped[float] = mapped_column(Real)
    quality: Mapped[float] = mapped_column(Real, nullable=True)
    service_s: Mapped[float] = mapped_column(Real)
    light_s: Mapped[float] = mapped_column(Real, nullable=True)
    heavy_s: Mapped[float] = mapped_column(Real, nullable=True)
    pareto: Mapped[bool] = mapped_column(Boolean, default=False)  # on the union front
    pareto_pair: Mapped[bool] = mapped_column(Boolean, default=False)  # on its pair's front
    profile: Mapped[Profile] = relationship(back_populates="rows")

    CONFIG_FIELDS = ("light", "heavy", "router_ratio", "theta", "disc_ratio", "tau", "fid",
                     "quality", "service_s", "light_s", "heavy_s")

    def to_config(self) -> CascadeConfig:
        return CascadeConfig(**{f: getattr(self, f) for f in self.CONFIG_FIELDS},
                             metric=self.profile.metric)

    @classmethod
    def from_config(cls, idx: int, c: CascadeConfig, pareto: bool, pareto_pair: bool
                    ) -> ProfileRow:
        return cls(idx=idx, pareto=pareto, pareto_pair=pareto_pair,
                   **{f: getattr(c, f) for f in cls.CONFIG_FIELDS})


def save_profile(session: Session, table: ProfileTable) -> Profile:
    """Add ``table`` as the next version of its name (the caller's transaction commits)."""
    latest = session.scalar(select(func.max(Profile.version)).where(Profile.name == table.name))
    union, per_pair = table.pareto_flags()
    meta = dict(table.meta)
    meta["score_quantiles"] = {str(m): list(q) for m, q in table.score_quantiles.items()}
    profile = Profile(
        name=table.name, version=(latest or 0) + 1, source=table.source,
        metric=table.metric, registry_snapshot=table.registry.to_list(), meta=meta,
        rows=[ProfileRow.from_config(i, c, union[i], per_pair[i])
              for i, c in enumerate(table.rows)],
    )
    session.add(profile)
    session.flush()
    return profile


def get_profile(session: Session, name: str, version: int | None = None) -> Profile | None:
    """The named profile at ``version``, or its latest version."""
    q = select(Profile).where(Profile.name == name)
    q = q.where(Profile.version == version) if version is not None else q.order_by(
        Profile.version.desc())
    return session.scalars(q.limit(1)).first()


def list_profiles(session: Session) -> list[tuple[Profile, int, int]]:
    """Every stored profile version with its row count and Pareto row count."""
    counts = (
        select(ProfileRow.profile_id, func.count().label("n"),
               func.sum(cast(ProfileRow.pareto, Integer)).label("p"))
        .group_by(ProfileRow.profile_id).subquery()
    )
    q = (select(Profile, counts.c.n, counts.c.p)
         .outerjoin(counts, counts.c.profile_id == Profile.id)
         .order_by(Profile.name, Profile.version))
    return [(p, int(n or 0), int(k or 0)) for p, n, k in session.execute(q)]


# -- router profiles: the router's fitted normalisation, weights and quantiles -------------
class RouterProfileRow(Base):
    """A ``RouterProfile.to_dict()`` body stored as a SQL row (latest per name wins)."""

    __tablename__ = "router_profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    body: Mapped[dict] = mapped_column(JSON)


def save_router_profile(session: Session, name: str, body: dict) -> RouterProfileRow:
    row = RouterProfileRow(name=name, body=body)
    session.add(row)
    session.flush()
    return row


def get_router_profile(session: Session, name: str) -> RouterProfileRow | None:
    q = (select(RouterProfileRow).where(RouterProfileRow.name == name)
         .order_by(RouterProfileRow.id.desc()).limit(1))
    return session.scalars(q).first()


# -- the serving stack: queries, plans, worker heartbeats (issue 6) ------------------------
# Times are epoch seconds (doubles): the pipeline subtracts them, and every process agrees
# on them without time-zone arithmetic. ``created`` stays a timestamp for people reading SQL.
QUERY_STATUSES = tuple(QueryStatus)  # the values of ``status`` (``planner.status``)


class QueryRow(Base):
    """One accepted generation request: written by the front door before its message is
    sent, then updated by the workers; the sweeper re-sends the message from this row."""

    __tablename__ = "queries"
    # bounded reads of the web side: recent rows by status (dashboard, /metrics), and by
    # owner (a key's gallery); see webapp.metrics and webapp.pages
    __table_args__ = (Index("ix_queries_status_updated_at", "status", "updated_at"),
                      Index("ix_queries_owner_status_updated_at", "owner", "status",
                            "updated_at"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    client: Mapped[str] = mapped_column(String(128), default="")
    # the API key that made it (webapp.auth.key_id, a hash; never the key); NULL: no keys
    owner: Mapped[str] = mapped_column(String(32), nullable=True)
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    slo_s: Mapped[float] = mapped_column(Real)
    status: Mapped[str] = mapped_column(String(16), index=True)
    queue: Mapped[str] = mapped_column(String(64))  # queue of the latest message
    route: Mapped[str] = mapped_column(String(16))  # light | heavy (front door decision)
    hardness: Mapped[float] = mapped_column(Real)
    theta: Mapped[float] = mapped_column(Real, nullable=True)
    tau: Mapped[float] = mapped_column(Real, nullable=True)
    plan_id: Mapped[int] = mapped_column(Integer, nullable=True)
    models: Mapped[list] = mapped_column(JSON, default=list)  # model ids that ran, in order
    served_model: Mapped[int] = mapped_column(Integer, nullable=True)
    quality: Mapped[float] = mapped_column(Real, nullable=True)  # served image's score
    light_quality: Mapped[float] = mapped_column(Real, nullable=True)  # light image's score
    clip: Mapped[float] = mapped_column(Real, nullable=True)
    image: Mapped[str] = mapped_column(String(255), nullable=True)  # file name in image_dir
    reason: Mapped[str] = mapped_column(Text, nullable=True)  # why dropped or failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # messages sent for it
    worker: Mapped[str] = mapped_column(String(128), nullable=True)
    received_at: Mapped[float] = mapped_column(Real)  # request in
    deadline: Mapped[float] = mapped_column(Real)  # received_at + slo_s
    enqueued_at: Mapped[float] = mapped_column(Real, nullable=True)  # first message sent
    started_at: Mapped[float] = mapped_column(Real, nullable=True)  # first batch began
    finished_at: Mapped[float] = mapped_column(Real, nullable=True)
    model_s: Mapped[float] = mapped_column(Real, default=0.0)  # batch seconds, summed
    updated_at: Mapped[float] = mapped_column(Real, index=True)
    # the generation parameters the serving model actually used (``Generation.params``:
    # steps, guidance, dtype, scheduler and spacing, size, ...); NULL for replay
    params: Mapped[dict] = mapped_column(JSON, nullable=True)


class PlanRow(Base):
    """One plan the beat task made (``Plan.to_dict()``, with the planner's ``memory``: a
    restarted beat resumes from the latest row), the live view it published, and what the
    planner was given (``inputs``, see ``hadis_celery.beat.plan_inputs``: ``hadis plan
    replay`` feeds them to the planner again; NULL for rows older than migration 0005)."""

    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    planner: Mapped[str] = mapped_column(String(64))
    light: Mapped[int] = mapped_column(Integer)
    heavy: Mapped[int] = mapped_column(Integer)
    demand: Mapped[float] = mapped_column(Real)
    fid: Mapped[float] = mapped_column(Real)
    overloaded: Mapped[bool] = mapped_column(Boolean, default=False)
    body: Mapped[dict] = mapped_column(JSON)  # Plan.to_dict()
    live: Mapped[dict] = mapped_column(JSON, default=dict)  # ActivePlan as published
    bindings: Mapped[dict] = mapped_column(JSON, default=dict)  # worker -> queue applied
    inputs: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class WorkerHeartbeat(Base):
    """The latest heartbeat of each worker (one row per worker name, updated in place)."""

    __tablename__ = "worker_heartbeats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str] = mapped_column(String(128), unique=True)
    model: Mapped[int] = mapped_column(Integer, nullable=True)
    queue: Mapped[str] = mapped_column(String(64), default="")
    batch: Mapped[int] = mapped_column(Integer, default=1)
    queue_length: Mapped[int] = mapped_column(Integer, default=0)
    backend: Mapped[str] = mapped_column(String(32), default="")
    batches: Mapped[int] = mapped_column(Integer, default=0)
    seen_at: Mapped[float] = mapped_column(Real)


class ModelLoad(Base):
    """One measured model load of a worker (issue 14): unload + load + warm-up, at start
    (``kind = "start"``) or when the plan moved the worker to another model (``"swap"``).
    The beat plans with each model's measured swap time instead of ``HADIS_SWAP_DELAY_S``
    (``store.measured_swap_s``)."""

    __tablename__ = "model_loads"
    __table_args__ = (Index("ix_model_loads_model_at", "model", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(100))  # the deployment's model name
    worker: Mapped[str] = mapped_column(String(128), default="")
    backend: Mapped[str] = mapped_column(String(32), default="")
    kind: Mapped[str] = mapped_column(String(8), default="start")  # start | swap
    load_s: Mapped[float] = mapped_column(Real)  # unload + load, wall seconds
    warmup_s: Mapped[float] = mapped_column(Real)  # the warm-up generation, wall seconds
    at: Mapped[float] = mapped_column(Real)  # epoch seconds
