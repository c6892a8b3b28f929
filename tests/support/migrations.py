"""Alembic, pointed at one database: how tests and benchmarks create the schema."""

from __future__ import annotations

from alembic import command

from store.db import alembic_config


def migrate(url: str) -> None:
    command.upgrade(alembic_config(url), "head")
