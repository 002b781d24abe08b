"""Schema migrations of the system's database: bring any catalogue (new, foundation-era or older)
to the head revision."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from imgsim.db.schema import CATALOG_TABLES, MIGRATED_TABLES, SERVICE_TABLES, Base

__all__ = ["CATALOG_TABLES", "MIGRATED_TABLES", "SERVICE_TABLES", "alembic_config",
           "current_revision", "downgrade_catalog", "head_revision", "include_object",
           "upgrade_catalog"]

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# A catalogue created before migrations existed (the foundation's create_all) is revision 0001.
BASELINE = "0001"
_PG_LOCK = 5_170_412  # advisory lock id: concurrent processes migrate one at a time


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """Autogenerate looks only at the migrated tables (``MIGRATED_TABLES``); a service table only
    when its model is loaded on ``Base`` (this package imports no model to load it)."""
    table = obj if type_ == "table" else getattr(obj, "table", None)
    table_name = name if type_ == "table" else getattr(table, "name", None)
    if table_name is None or table_name in CATALOG_TABLES:
        return True
    return table_name in SERVICE_TABLES and table_name in Base.metadata.tables


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_catalog(engine: Engine, revision: str = "head") -> str:
    """Migrate to ``revision`` (default: head); returns the revision the catalogue is at."""
    head = head_revision()
    target = head if revision == "head" else revision
    if current_revision(engine) == target:  # the common case: one cheap query
        return target
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # transactional DDL + a lock: one migrator wins
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        ctx = MigrationContext.configure(conn)
        current = ctx.get_current_revision()
        if current is None and inspect(conn).has_table("images"):
            log.info("catalogue predates migrations: stamping it as revision %s", BASELINE)
            command.stamp(alembic_config(conn), BASELINE)
            current = BASELINE
        if current != target:
            log.info("migrating catalogue %s from %s to %s", engine.url.render_as_string(),
                     current or "empty", target)
            command.upgrade(alembic_config(conn), target)
    return target


def downgrade_catalog(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)
