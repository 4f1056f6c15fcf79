"""queries.params (the generation parameters a query was served with) and model_loads (each
worker's measured load + warm-up time per model, which the planner uses as the swap time)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
REAL = sa.Float(precision=53)  # hadis_celery.tables.Real: a double, NaN stored as NULL


def upgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.add_column(sa.Column("params", sa.JSON(), nullable=True))
    op.create_table(
        "model_loads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("load_s", REAL, nullable=False),
        sa.Column("warmup_s", REAL, nullable=False),
        sa.Column("at", REAL, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_loads")),
    )
    op.create_index("ix_model_loads_model_at", "model_loads", ["model", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_model_loads_model_at", table_name="model_loads")
    op.drop_table("model_loads")
    with op.batch_alter_table("queries") as batch:
        batch.drop_column("params")
