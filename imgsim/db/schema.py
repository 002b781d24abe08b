"""The declarative base every table is declared on, and which tables the migrations own."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON
from sqlalchemy.orm import DeclarativeBase

# The indexer's catalogue (models: indexer.catalog).
CATALOG_TABLES = frozenset({"collections", "images", "models", "index_versions"})
# The service's tables (models: service.jobs.store.JobRow, service.auth.ApiKeyRow), migrated by
# the same tree so that one `imgsim index migrate` brings the whole database up.
SERVICE_TABLES = frozenset({"jobs", "api_keys"})
MIGRATED_TABLES = CATALOG_TABLES | SERVICE_TABLES


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}
