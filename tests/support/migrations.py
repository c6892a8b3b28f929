"""Alembic, pointed at one database: how tests and benchmarks create the schema."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from .paths import REPO


def alembic_config(url: str) -> Config:
    config = Config(str(REPO / "alembic.ini"))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    return config


def migrate(url: str) -> None:
    command.upgrade(alembic_config(url), "head")
