"""Alembic's environment for Canopy's store: run on the connection ``store.schema`` passes in.

``store.schema.upgrade`` calls ``alembic.command.upgrade`` with the live connection in
``config.attributes["connection"]``; ``target_metadata`` (every table of the validator and
the API) is what ``alembic revision --autogenerate`` compares against when a developer adds
a migration (``store/migrations/README``).
"""

from __future__ import annotations

from alembic import context

from store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through store.schema.upgrade (it passes the database connection)")
context.configure(connection=connection, target_metadata=metadata(),
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
