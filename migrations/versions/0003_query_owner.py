"""queries.owner (the API key that made a query) and the indexes that keep the web side's
reads bounded (the gallery, the dashboard and /metrics read by status and time)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=32), nullable=True))
    op.create_index("ix_queries_status_updated_at", "queries", ["status", "updated_at"],
                    unique=False)
    op.create_index("ix_queries_owner_status_updated_at", "queries",
                    ["owner", "status", "updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_queries_owner_status_updated_at", table_name="queries")
    op.drop_index("ix_queries_status_updated_at", table_name="queries")
    with op.batch_alter_table("queries") as batch:
        batch.drop_column("owner")
