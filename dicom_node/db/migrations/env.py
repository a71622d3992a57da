"""Alembic environment: uses the engine handed over in ``config.attributes``."""

from alembic import context

from dicom_node.db.tables import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
