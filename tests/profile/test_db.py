"""SQL history of profiles on PostgreSQL and SQLite: migrations, versions, transactions."""

from __future__ import annotations

import math

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select

from hadis_celery import db, tables
from hadis_celery.examples import sd35_registry
from planner.table import ProfileTable


@pytest.fixture()
def engine(db_url):
    e = db.make_engine(db_url)
    db.upgrade(e)
    yield e
    e.dispose()


def _table(rows, name="sd35"):
    return ProfileTable(name=name, registry=sd35_registry(), rows=tuple(rows), source="test",
                        score_quantiles={0: [0.0, 0.5, 1.0]}, meta={"note": "x"})


def test_migrations_match_the_models_and_go_down_and_up(engine):
    assert db.current_revision(engine) == db.head_revision() == "0005"
    names = set(inspect(engine).get_table_names())
    assert {"profiles", "profile_rows", "router_profiles", "alembic_version"} <= names
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), tables.Base.metadata)
    assert diff == []
    db.downgrade(engine, "base")
    assert not {"profiles", "profile_rows"} & set(inspect(engine).get_table_names())
    db.ensure_schema(engine)
    assert db.current_revision(engine) == "0005"


def test_import_twice_gives_two_versions_latest_by_default(engine, sd35_table):
    for _ in range(2):
        with db.transaction(engine) as s:
            tables.save_profile(s, _table(sd35_table))
    with db.transaction(engine) as s:
        tables.save_profile(s, _table(sd35_table[:10], name="other"))
    with db.transaction(engine) as s:
        listed = [(p.name, p.version, n) for p, n, _ in tables.list_profiles(s)]
        assert listed == [("other", 1, 10), ("sd35", 1, 726), ("sd35", 2, 726)]
        latest = tables.get_profile(s, "sd35")
        assert latest.version == 2
        assert tables.get_profile(s, "sd35", 1).version == 1
        assert tables.get_profile(s, "sd35", 3) is None
        assert tables.get_profile(s, "nope") is None
        table = latest.to_table()
    assert table.rows == tuple(sd35_table)  # ±inf θ/τ round-trip on both databases
    assert table.score_quantiles == {0: [0.0, 0.5, 1.0]} and table.meta == {"note": "x"}
    assert table.registry == sd35_registry()


def test_nan_is_stored_as_null_and_read_back(engine, sd35_table):
    from dataclasses import replace

    rows = [replace(c, theta=math.nan, quality=math.nan) for c in sd35_table[:5]]
    with db.transaction(engine) as s:
        tables.save_profile(s, _table(rows))
    with db.transaction(engine) as s:
        back = tables.get_profile(s, "sd35").to_table().rows
        n_null = s.scalar(select(func.count()).where(tables.ProfileRow.theta.is_(None)))
    assert n_null == 5 and all(math.isnan(c.theta) and math.isnan(c.quality) for c in back)


def test_pareto_flags_are_stored(engine, sd35_table):
    with db.transaction(engine) as s:
        tables.save_profile(s, _table(sd35_table))
    with db.transaction(engine) as s:
        (_, n, k), = tables.list_profiles(s)
        assert (n, k) == (726, 197)
        prof = tables.get_profile(s, "sd35")
        front = [r.to_config() for r in prof.rows if r.pareto]
    assert front == _table(sd35_table).pareto()


def test_a_failed_transaction_leaves_nothing(engine, sd35_table):
    with pytest.raises(RuntimeError), db.transaction(engine) as s:
        tables.save_profile(s, _table(sd35_table))
        tables.save_router_profile(s, "sd35", {"weights": [1.0]})
        raise RuntimeError("failure after the rows were flushed")
    with db.transaction(engine) as s:
        assert s.scalar(select(func.count()).select_from(tables.Profile)) == 0
        assert s.scalar(select(func.count()).select_from(tables.ProfileRow)) == 0
        assert s.scalar(select(func.count()).select_from(tables.RouterProfileRow)) == 0


def test_router_profile_rows(engine, router_profile):
    from planner.router.profile import RouterProfile

    with db.transaction(engine) as s:
        tables.save_router_profile(s, "sd35", {"old": True})
        tables.save_router_profile(s, "sd35", router_profile.to_dict())
    with db.transaction(engine) as s:
        row = tables.get_router_profile(s, "sd35")
        assert RouterProfile.from_dict(row.body) == router_profile
        assert tables.get_router_profile(s, "missing") is None
