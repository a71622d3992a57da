"""Alembic environment: uses the engine handed over in ``config.attributes``.

Every process that connects migrates (``db.engine.connect``), so several start at once on a new or older
database: serve's workers, ``dicom-node worker`` on other hosts. On PostgreSQL they take one advisory
lock for the migration's transaction: the first migrates, the others wait and then find the schema at
head. On SQLite the transaction's ``BEGIN IMMEDIATE`` already admits one writer at a time.
"""

from alembic import context
from sqlalchemy import text

from dicom_node.db.tables import metadata

MIGRATION_LOCK = 0x44_4E_4D_49_47  # "DNMIG": pg_advisory_xact_lock key, released at commit

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
