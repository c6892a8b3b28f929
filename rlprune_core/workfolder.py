"""A job's work folder: ``state.json`` (the spec, the stages done and their figures, their timings) and
the files the stages leave for each other.

Layout::

    state.json                    the spec, stages done, their figures and timings (kept: a finished job
                                  called again returns its report)
    checkpoints/                  per-epoch training state and the agent's search state (removed at the end)
    pretrained.safetensors        the unpruned model after pretraining
    prune.json                    the kept channels of every network the prune stage hands on (removed at
                                  the end: model.json holds the returned one's)
    finalist-<n>.safetensors      each finetuned finalist (removed at the end)
    finetuned.safetensors         the returned network after finetuning (removed at the end)
    model.safetensors, model.json, model.pt2, model.onnx, report.json   the deliverables

Every write is atomic, so a job killed at any moment finds each file whole or absent.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import WorkdirError
from .files import TEMP_SUFFIX, write_atomically
from .spec import JobSpec

# What only a resume needs; removed once the job has succeeded (it can be far larger than the deliverables).
INTERMEDIATES = ("finetuned.safetensors", "prune.json")
INTERMEDIATE_PATTERNS = ("finalist-*.safetensors",)


def _overlay(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``base`` with every field of ``given`` put in, nested objects field by field."""
    merged = dict(base)
    for key, value in given.items():
        both_objects = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _overlay(merged[key], value) if both_objects else value
    return merged


def same_job(stored: JobSpec, spec: JobSpec) -> bool:
    """Whether ``spec`` asks for the job ``stored`` began.

    Only the fields ``spec`` sets are compared: a field it leaves to its default means "as before", so a
    job begun under an earlier default (a finetune learning rate that has since changed) resumes with the
    values it began with instead of being refused or silently changed. (A field added since the job began
    takes its default.)
    """
    given = spec.model_dump(mode="json", exclude_unset=True)
    return JobSpec.model_validate(_overlay(stored.model_dump(mode="json"), given)) == stored


class WorkFolder:
    """The folder and its ``state.json``: opening it checks that it holds this spec's job (or none).

    :attr:`spec` is the job's spec as it began: a resumed run goes on with it, whatever defaults have
    changed since.
    """

    def __init__(self, path: Path, spec: JobSpec):
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.state_path = path / "state.json"
        path.mkdir(parents=True, exist_ok=True)
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
            self.spec = JobSpec.model_validate(self.state["spec"])
            if not same_job(self.spec, spec):
                raise WorkdirError("the work folder holds a different job; use an empty folder for a new spec")
        else:
            self.spec = spec
            self.state = {"spec": spec.model_dump(mode="json"), "done": {}, "timings_s": {}, "baselines": {}}
        self.state.setdefault("finalists", {})
        self.state.setdefault("warnings", [])

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def done(self) -> dict[str, dict[str, Any]]:
        """Each finished stage's figures, in the order the stages finished."""
        return self.state["done"]

    @property
    def spec_as_given(self) -> dict[str, Any]:
        return self.state["spec"]

    @property
    def baselines(self) -> dict[str, dict[str, Any]]:
        """Each finetuned baseline's figures, recorded as it finishes."""
        return self.state["baselines"]

    @property
    def finalists(self) -> dict[str, dict[str, Any]]:
        """Each finetuned finalist's figures, recorded as it finishes."""
        return self.state["finalists"]

    @property
    def warnings(self) -> list[dict[str, str]]:
        return self.state["warnings"]

    @property
    def timings(self) -> dict[str, float]:
        return self.state["timings_s"]

    def save(self) -> None:
        self.write_json("state.json", self.state)

    def write_json(self, name: str, data: Any) -> None:
        write_atomically(self.path / name, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def stage_seconds(self, stage: str, began: float) -> float:
        """Seconds spent on ``stage``: by earlier, interrupted attempts at it, and by this one since ``began``."""
        return round(self.timings.get(stage, 0.0) + time.perf_counter() - began, 3)

    def finish_stage(self, stage: str, began: float, *, seconds: float | None = None, **figures: Any) -> None:
        """Record a stage as done, with its figures and its time."""
        self.timings[stage] = seconds if seconds is not None else self.stage_seconds(stage, began)
        self.done[stage] = figures
        self.save()

    def record(self, records: dict[str, dict[str, Any]], name: str, figures: dict[str, Any]) -> None:
        """Add ``name``'s figures to one of the record sets (:attr:`baselines`, :attr:`finalists`) and save."""
        records[name] = figures
        self.save()

    def warn(self, code: str, message: str) -> bool:
        """Record a warning for the report; false if it was recorded before (a resumed run)."""
        if any(w["code"] == code for w in self.warnings):
            return False
        self.warnings.append({"code": code, "message": message})
        self.save()
        return True

    def remove_intermediates(self) -> None:
        """Drop what only a resume needs, and temporary files of writers that died before renaming them."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        for name in INTERMEDIATES:
            (self.path / name).unlink(missing_ok=True)
        for pattern in INTERMEDIATE_PATTERNS:
            for path in self.path.glob(pattern):
                path.unlink(missing_ok=True)
        for leftover in self.path.glob("*" + TEMP_SUFFIX):
            leftover.unlink(missing_ok=True)
