"""Alembic environment: migrates the connection imgsim.db.migrate hands over (or the URL in alembic.ini)."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from imgsim.db.migrate import include_object
from imgsim.db.schema import Base

config = context.config
target_metadata = Base.metadata


def run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER constraints, so batch ops copy the table
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, compare_type=True, include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:  # the `alembic` command line, with sqlalchemy.url set in an ini file
    engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as conn:
        run(conn)
