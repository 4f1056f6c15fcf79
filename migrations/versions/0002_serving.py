"""queries, plans, worker heartbeats (the serving stack)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

REAL = sa.Float(precision=53)  # hadis_celery.tables.Real: a double, NaN stored as NULL


def upgrade() -> None:
    op.create_table(
        "queries",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client", sa.String(length=128), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("slo_s", REAL, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("route", sa.String(length=16), nullable=False),
        sa.Column("hardness", REAL, nullable=False),
        sa.Column("theta", REAL, nullable=True),
        sa.Column("tau", REAL, nullable=True),
        sa.Column("plan_id", sa.Integer(), nullable=True),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("served_model", sa.Integer(), nullable=True),
        sa.Column("quality", REAL, nullable=True),
        sa.Column("light_quality", REAL, nullable=True),
        sa.Column("clip", REAL, nullable=True),
        sa.Column("image", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("received_at", REAL, nullable=False),
        sa.Column("deadline", REAL, nullable=False),
        sa.Column("enqueued_at", REAL, nullable=True),
        sa.Column("started_at", REAL, nullable=True),
        sa.Column("finished_at", REAL, nullable=True),
        sa.Column("model_s", REAL, nullable=False),
        sa.Column("updated_at", REAL, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queries")),
    )
    op.create_index(op.f("ix_queries_status"), "queries", ["status"], unique=False)
    op.create_index(op.f("ix_queries_updated_at"), "queries", ["updated_at"], unique=False)

    op.create_table(
        "plans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("planner", sa.String(length=64), nullable=False),
        sa.Column("light", sa.Integer(), nullable=False),
        sa.Column("heavy", sa.Integer(), nullable=False),
        sa.Column("demand", REAL, nullable=False),
        sa.Column("fid", REAL, nullable=False),
        sa.Column("overloaded", sa.Boolean(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("live", sa.JSON(), nullable=False),
        sa.Column("bindings", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
    )

    op.create_table(
        "worker_heartbeats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("model", sa.Integer(), nullable=True),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("queue_length", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.Column("seen_at", REAL, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_heartbeats")),
        sa.UniqueConstraint("worker", name=op.f("uq_worker_heartbeats_worker")),
    )


def downgrade() -> None:
    op.drop_table("worker_heartbeats")
    op.drop_table("plans")
    op.drop_index(op.f("ix_queries_updated_at"), table_name="queries")
    op.drop_index(op.f("ix_queries_status"), table_name="queries")
    op.drop_table("queries")
