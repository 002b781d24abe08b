"""The database of the whole system: one declarative ``Base``, which package owns which table,
and the one Alembic migration tree that brings any catalogue database (the indexer's catalogue,
the service's API keys and jobs) to the head revision."""
