"""Alembic environment of the annotation app: the URL comes from the caller (``novalign.annotate.db.migrate``)
through ``config.attributes['connection']`` or the ``sqlalchemy.url`` option."""

from alembic import context
from sqlalchemy import create_engine

from novalign.annotate.models import Base

target_metadata = Base.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
