"""The deployment files: a valid Compose file whose commands exist in this project, and documented settings."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema
import pytest
import yaml

from store.settings import Settings

from ..support.paths import REPO
from ..support.specs import tiny_spec

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
PROJECT_SERVICES = ["migrate", "api", "worker"]


def test_compose_file_follows_the_compose_specification():
    schema = json.loads((REPO / "tests" / "schemas" / "compose-spec.json").read_text())
    # the file names its draft by a non-canonical URL; it is written for draft 7 semantics
    jsonschema.Draft7Validator(schema).validate(COMPOSE)
    default = {name for name, service in COMPOSE["services"].items() if not service.get("profiles")}
    assert default == {"postgres", "redis", "migrate", "api", "worker"}
    assert COMPOSE["services"]["seaweedfs"]["profiles"] == ["s3"]  # object storage is opt-in
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


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_the_images_copy_what_exists_and_run_a_real_command(name):
    dockerfile = (REPO / name).read_text()
    copied = {path for source in re.findall(r"^COPY (?!--from)(.+?) \S+$", dockerfile, flags=re.MULTILINE)
              for path in source.split()}
    assert all((REPO / path).exists() for path in copied), copied
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert set(packages["packages"]) <= copied, "the image must copy every package the project builds"
    assert "examples" in copied  # the dashboard offers them
    assert re.search(r"^USER (?!root)\w+", dockerfile, flags=re.MULTILINE)
    # installs from the lock, keeps no download cache, and only the worker image has the ML stack
    syncs = re.findall(r"uv sync (.+)", dockerfile)
    assert syncs and all("--frozen" in s and "--no-cache" in s and "--no-dev" in s for s in syncs)
    assert all(("--extra worker" in s) == (name == "Dockerfile.gpu") for s in syncs)
    _check_command(json.loads(re.search(r"^CMD (.+)$", dockerfile, flags=re.MULTILINE).group(1)))


def test_the_api_and_migrations_run_from_the_api_image_and_workers_from_the_worker_image():
    services = COMPOSE["services"]
    assert services["migrate"]["build"]["dockerfile"] == "Dockerfile"
    assert services["worker"]["build"]["dockerfile"] == "Dockerfile.gpu"
    assert services["api"]["image"] == services["migrate"]["image"] != services["worker"]["image"]


def test_env_example_and_the_operations_guide_document_every_setting():
    example, guide = (REPO / ".env.example").read_text(), (REPO / "docs" / "operations.md").read_text()
    for name in Settings.model_fields:
        assert f"RLPRUNE_{name.upper()}" in example, name
        assert f"RLPRUNE_{name.upper()}" in guide, name
    for variable in re.findall(r"\$\{(\w+)", (REPO / "docker-compose.yml").read_text()):
        assert f"{variable}=" in example, variable


def test_secrets_and_environments_stay_out_of_git_and_of_the_image():
    ignored_by_git = (REPO / ".gitignore").read_text().split()
    left_out_of_builds = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignored_by_git
    assert {".env", ".venv", ".git", "rlprune-data"} <= set(left_out_of_builds)


# A fresh interpreter in which every module that only the ``worker`` extra installs fails to import, as in
# the API image: a key is created, the app answers, and a job is accepted and queued.
WITHOUT_WORKER_EXTRA = """
import contextlib, importlib.metadata, io, json, sys
from pathlib import Path

blocked = set(json.loads(sys.argv[1]))
top_level = {module for module, dists in importlib.metadata.packages_distributions().items()
             if {d.lower().replace("_", "-") for d in dists} & blocked}


class WorkerExtraMissing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in top_level:
            raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, WorkerExtraMissing())
from service.cli import main
from starlette.testclient import TestClient
from api.app import create_app
from store.settings import Settings

data = Path(sys.argv[2])
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    assert main(["keys", "create", "--tenant", "ci", "--name", "ci", "--data-dir", str(data)]) == 0
headers = {"Authorization": "Bearer " + printed.getvalue().split()[0]}
with TestClient(create_app(Settings(data_dir=data))) as client:
    assert client.get("/healthz").status_code == 200
    created = client.post("/jobs", json=json.loads(sys.argv[3]), headers=headers)
    assert created.status_code == 202, created.text
    assert client.get("/jobs/" + created.json()["id"], headers=headers).json()["status"] == "queued"
assert not {m.split(".")[0] for m in sys.modules} & top_level
"""


def _worker_only_distributions() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def name(requirement: str) -> str:
        return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    base = {name(r) for r in project["dependencies"]}
    return sorted({name(r) for r in project["optional-dependencies"]["worker"]} - base)


def test_the_api_the_cli_and_the_client_need_no_worker_extra(tmp_path):
    """The API image installs the project without the ``worker`` extra: torch must never be needed there."""
    blocked = _worker_only_distributions()
    assert {"torch", "torchvision", "onnxruntime"} <= set(blocked)
    spec = tiny_spec().model_dump(mode="json")
    result = subprocess.run([sys.executable, "-c", WITHOUT_WORKER_EXTRA, json.dumps(blocked), str(tmp_path),
                             json.dumps(spec)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (``!reset``, ``!override``), read as the values they carry."""


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, lambda loader, node: (
        loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_scalar(node)))


@pytest.mark.parametrize("host_uv", ["shim", "none"])
def test_the_images_are_built_with_the_projects_own_uv_whatever_the_host_has(tmp_path, host_uv):
    """An operator's uv is often a shim script (pyenv, asdf, mise) that cannot run inside an image."""
    folder = tmp_path / "bin"
    folder.mkdir()
    if host_uv == "shim":
        shim = folder / "uv"
        shim.write_text('#!/usr/bin/env bash\nexec /nonexistent/libexec/pyenv exec uv "$@"\n')
        shim.chmod(0o755)
    tools = ":".join(str(Path(shutil.which(t)).parent) for t in ("make", "python3", "readlink", "od"))
    assert (shutil.which("uv", path=f"{folder}:{tools}") is None) == (host_uv == "none")
    found = subprocess.run(["bash", str(REPO / "ci" / "image-uv.sh")], capture_output=True, text=True,
                           env={"PATH": f"{folder}:{tools}"}, check=True).stdout.strip()
    assert Path(found) == (REPO / ".tools" / "bin" / "uv").resolve()
    assert Path(found).read_bytes()[:4] == b"\x7fELF"
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout
    assert re.search(r"UV_VERSION := (\S+)", (REPO / "Makefile").read_text())[1] in version


def test_the_ci_override_pulls_nothing_and_publishes_only_the_api_on_loopback():
    override = yaml.load((REPO / "docker-compose.ci.yml").read_text(), Loader=_ComposeLoader)["services"]
    assert set(override) <= set(COMPOSE["services"])
    for name in ("postgres", "redis"):  # stand-ins built here from the local Debian base
        assert override[name]["pull_policy"] == "never" and (REPO / override[name]["build"] / "Dockerfile").is_file()
    for name in ("migrate", "worker"):  # every base image a build argument pointing at a local image
        assert set(override[name]["build"]["args"]) == {"BASE_IMAGE", "UV_IMAGE"}
    published = [port for service in override.values() for port in service.get("ports", [])]
    assert published == ["127.0.0.1:${RLPRUNE_API_PORT:-18000}:8000"]
    assert "deploy" in override["worker"]  # the GPU reservation is reset: the smoke test runs on the CPU
    script = (REPO / "ci/compose-smoke.sh").read_text()
    assert "down -v" in script and "network.before" in script and "kill -TERM" in script
