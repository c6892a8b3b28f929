"""Alembic owns the schema: upgrading to head yields exactly the models, and downgrading removes it all."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from store.db import make_engine
from store.models import Base

from ..support.databases import fresh_postgres
from ..support.migrations import alembic_config


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        with fresh_postgres() as url:
            yield url


def test_upgrade_matches_the_models_and_downgrade_removes_everything(database_url):
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
