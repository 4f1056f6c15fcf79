"""profiles, profile rows, router profiles

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

REAL = sa.Float(precision=53)  # hadis_celery.tables.Real: a double, NaN stored as NULL


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("registry", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profiles")),
        sa.UniqueConstraint("name", "version", name="uq_profiles_name_version"),
    )
    op.create_index(op.f("ix_profiles_name"), "profiles", ["name"], unique=False)

    op.create_table(
        "router_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_router_profiles")),
    )
    op.create_index(op.f("ix_router_profiles_name"), "router_profiles", ["name"], unique=False)

    op.create_table(
        "profile_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("light", sa.Integer(), nullable=False),
        sa.Column("heavy", sa.Integer(), nullable=False),
        sa.Column("router_ratio", REAL, nullable=False),
        sa.Column("theta", REAL, nullable=True),
        sa.Column("disc_ratio", REAL, nullable=False),
        sa.Column("tau", REAL, nullable=True),
        sa.Column("fid", REAL, nullable=False),
        sa.Column("quality", REAL, nullable=True),
        sa.Column("service_s", REAL, nullable=False),
        sa.Column("light_s", REAL, nullable=True),
        sa.Column("heavy_s", REAL, nullable=True),
        sa.Column("pareto", sa.Boolean(), nullable=False),
        sa.Column("pareto_pair", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["profiles.id"],
                                name=op.f("fk_profile_rows_profile_id_profiles"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profile_rows")),
    )
    op.create_index(op.f("ix_profile_rows_profile_id"), "profile_rows", ["profile_id"],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_profile_rows_profile_id"), table_name="profile_rows")
    op.drop_table("profile_rows")
    op.drop_index(op.f("ix_router_profiles_name"), table_name="router_profiles")
    op.drop_table("router_profiles")
    op.drop_index(op.f("ix_profiles_name"), table_name="profiles")
    op.drop_table("profiles")
