"""ingest_pending: series with journaled instances not yet materialized (not routed while listed).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "ingest_pending",
        sa.Column("receiver", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("receiver", "series_uid"),
    )
    op.create_index(op.f("ix_ingest_pending_study_uid"), "ingest_pending", ["study_uid"], unique=False)
    op.create_index("ix_ingest_pending_series_uid", "ingest_pending", ["series_uid"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ingest_pending_series_uid", table_name="ingest_pending")
    op.drop_index(op.f("ix_ingest_pending_study_uid"), table_name="ingest_pending")
    op.drop_table("ingest_pending")
