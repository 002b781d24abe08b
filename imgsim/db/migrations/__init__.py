"""Alembic migrations of the catalogue schema (run by imgsim.db.migrate, or `imgsim index migrate`)."""
