"""Alembic migrations of the catalogue schema (run by indexer.migrate, or `imgsim index migrate`)."""
