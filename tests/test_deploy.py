"""The deployment files: a valid Compose file whose commands exist in this project, and documented settings."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema
import pytest
import yaml

from store.settings import Settings

from .conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
PROJECT_SERVICES = ["migrate", "api", "worker"]


def test_compose_file_follows_the_compose_specification():
    schema = json.loads((Path(__file__).parent / "schemas" / "compose-spec.json").read_text())
    # the file names its draft by a non-canonical URL; it is written for draft 7 semantics
    jsonschema.Draft7Validator(schema).validate(COMPOSE)
    assert set(COMPOSE["services"]) == {"postgres", "redis", "migrate", "api", "worker"}
    devices = COMPOSE["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert all("healthcheck" in COMPOSE["services"][name] for name in ("postgres", "redis", "api", "worker"))


def _check_command(command: list[str]) -> None:
    """The program is a console script installed with the project, and the modules it names import."""
    program, *args = command
    scripts = {ep.name for ep in entry_points(group="console_scripts")}
    assert program in scripts or shutil.which(program, path=str(Path(sys.executable).parent)), program
    for arg in args:
        match = re.fullmatch(r"([a-z_]+(?:\.[a-z_]+)+)(?::([a-z_]+))?", arg)
        if match and match.group(1).split(".")[0] in ("api", "worker", "store", "service", "rlprune_core"):
            module = importlib.import_module(match.group(1))
            if match.group(2):
                assert getattr(module, match.group(2)) is not None
    if program == "alembic":
        assert (REPO / "alembic.ini").is_file()


@pytest.mark.parametrize("service", PROJECT_SERVICES)
def test_every_service_command_exists_in_the_project(service):
    _check_command(COMPOSE["services"][service]["command"])


def test_the_image_copies_what_exists_and_runs_a_real_command():
    dockerfile = (REPO / "Dockerfile.gpu").read_text()
    for source in re.findall(r"^COPY (?!--from)(.+?) \S+$", dockerfile, flags=re.MULTILINE):
        for path in source.split():
            assert (REPO / path).exists(), path
    copied = {path for source in re.findall(r"^COPY (?!--from)(.+?) \S+$", dockerfile, flags=re.MULTILINE)
              for path in source.split()}
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert set(packages["packages"]) <= copied, "the image must copy every package the project builds"
    assert "examples" in copied  # the dashboard offers them
    assert re.search(r"^USER (?!root)\w+", dockerfile, flags=re.MULTILINE)
    _check_command(json.loads(re.search(r"^CMD (.+)$", dockerfile, flags=re.MULTILINE).group(1)))


def test_env_example_documents_every_setting():
    example = (REPO / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"RLPRUNE_{name.upper()}" in example, name
    for variable in re.findall(r"\$\{(\w+)", (REPO / "docker-compose.yml").read_text()):
        assert f"{variable}=" in example, variable


def test_secrets_and_environments_stay_out_of_git_and_of_the_image():
    ignored_by_git = (REPO / ".gitignore").read_text().split()
    left_out_of_builds = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignored_by_git
    assert {".env", ".venv", ".git", "rlprune-data"} <= set(left_out_of_builds)
