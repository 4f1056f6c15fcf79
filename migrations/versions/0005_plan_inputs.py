"""plans.inputs: what the planner was given for each plan (queue lengths and rates, demand,
workers, SLO, swap times, the previous plan and the planner's memory), so that a recorded
run can be replayed through the planner offline (``hadis plan replay``); the planner's
state itself travels in ``plans.body`` (``Plan.memory``), from which a restarted beat resumes

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("inputs", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("inputs")
