"""Errors a user can act on. Each has a stable ``code`` (for the job API) and a one-sentence message.

Anything else escaping the pipeline is a bug: callers log its traceback and report an internal error.
"""

from __future__ import annotations


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
    """The finished model, measured on the budget's target, is slower than the budget allows."""

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
