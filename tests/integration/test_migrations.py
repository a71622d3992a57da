"""The migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dicom_node.db import connect, metadata


def test_migrated_schema_matches_the_tables(db_url: str) -> None:
    engine = connect(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    connect(db_url)  # running the migrations again is a no-op
