"""Errors a user can act on. Each has a stable ``code`` (for the job API) and a one-sentence message; and
how a spec that does not validate is told: each field's dotted path, a plain message, the closest known
name for an unknown one, and where a YAML parser stopped.

Anything else escaping the pipeline is a bug: callers log its traceback and report an internal error.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError


class RlpruneError(Exception):
    code = "error"


class SpecError(RlpruneError, ValueError):
    """A spec that cannot be used; the message names the field."""

    code = "invalid_spec"


class DataError(RlpruneError):
    """The data a spec asks for cannot be provided; the message names the spec field and what to do.

    It never names a path on this machine or what a folder holds: over the service, the dataset lives on a
    machine the user cannot see, and such details would tell one tenant about another's files.
    """

    code = "data_unavailable"


class BudgetError(RlpruneError, ValueError):
    """No channel counts allowed by min_channels / round_to fit the budget."""

    code = "budget_infeasible"


class BudgetMissedError(RlpruneError):
    """The finished model misses its budget: measured slower on the budget's target than a latency budget
    allows, or over a MACs or params budget (never by construction; checked before any artifact)."""

    code = "budget_missed"


class CheckpointError(RlpruneError):
    """model.checkpoint is missing or does not fit the architecture.

    Every cause gives the same sentence, so the error cannot tell whether some file exists.
    """

    code = "bad_checkpoint"


class ResourceLimitError(RlpruneError):
    """The job would need more memory than the caller allows; raised before the memory is taken."""

    code = "resource_limit"


class WorkdirError(RlpruneError):
    """The work folder holds a different job, so resuming there would mix two runs."""

    code = "workdir_conflict"


class VerificationError(RlpruneError):
    """A reloaded artifact does not score what the report says."""

    code = "verification_failed"


# -- saying what is wrong with a spec -------------------------------------------------------------------
def yaml_problem(exc: yaml.YAMLError) -> str:
    """``line 3, column 7: mapping values are not allowed here``: where the parser stopped, and why."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    reason = problem or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {reason}" if mark is not None else reason


def field_errors(errors: Iterable[Mapping[str, Any]], whole: str = "spec",
                 model: type[BaseModel] | None = None) -> list[dict[str, str]]:
    """Pydantic's errors as ``{"field": "prune.budget.keep", "message": ...}``: the dotted path (without a
    request's leading ``body``; ``whole`` where the error is about the whole thing) and a plain message. With
    the ``model`` that was validated, an unknown field's message names the closest known one (a typo's fix)."""
    described = []
    for err in errors:
        loc = [str(p) for p in err["loc"]]
        path = loc[1:] if loc[:1] == ["body"] else loc
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(path[-1], _fields_at(model, path[:-1]), n=1, cutoff=0.6)
            message = f"unknown field; did you mean {close[0]!r}?" if close else "unknown field"
        described.append({"field": ".".join(path) or whole, "message": message})
    return described


def _fields_at(model: type[BaseModel] | None, path: list[str]) -> list[str]:
    """The field names of the model found at ``path`` inside ``model`` (none where the path leaves models)."""
    def is_model(candidate: object) -> bool:
        return isinstance(candidate, type) and issubclass(candidate, BaseModel)

    for part in path:
        field = model.model_fields.get(part) if is_model(model) else None
        if field is None:
            return []
        model = next((c for c in get_args(field.annotation) or (field.annotation,) if is_model(c)), None)
    return list(model.model_fields) if is_model(model) else []


def describe_validation_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem, each starting with the dotted field path (``prune.budget.keep: ...``)."""
    return "; ".join(f"{e['field']}: {e['message']}" for e in field_errors(exc.errors(), model=model))
