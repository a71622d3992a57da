"""Initial schema: studies, series, instances, jobs, results, deliveries, events.

Revision ID: 0001
Revises:
"""

from alembic import op

from dicom_node.db.tables import metadata

revision = "0001"
down_revision = None


def upgrade() -> None:
    # The first revision creates the tables exactly as tables.py defines them at this revision.
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
