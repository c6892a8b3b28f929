"""Progress events and cooperative stopping, the pipeline's only ways of talking to whoever runs it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

STAGES = ("pretrain", "prune", "finetune", "export")


class EventType(StrEnum):
    """What a pipeline event reports."""

    STAGE = "stage"  # a stage began
    EPOCH = "epoch"  # a training epoch ended (its run, losses, accuracies)
    PRUNE_STEP = "prune_step"  # a search step ended (rewards, accuracy, cost)
    INFO = "info"  # a one-off notice: a re-initialised classifier, a latency table, the finalist chosen
    WARNING = "warning"  # something the user should act on: a teacher near chance
    RESUMED = "resumed"  # a run continued from its checkpoint
    COMPLETED = "completed"  # the job's report is written


@dataclass(frozen=True)
class Event:
    """One :class:`EventType` with its stage, message, the job's progress and figures."""

    type: str
    stage: str | None
    message: str
    progress: float  # of the whole job, 0-1
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EventSink = Callable[[Event], None]


class Stopped(Exception):
    """Raised inside the pipeline when ``should_stop`` said yes; the work done so far is checkpointed."""


class StopCheck:
    """Asks ``should_stop`` at most every ``interval`` seconds, so a caller may poll a database cheaply."""

    def __init__(self, should_stop: Callable[[], bool] | None, interval: float = 0.5):
        self._should_stop = should_stop
        self._interval = interval
        self._last = float("-inf")

    def __call__(self) -> None:
        if self._should_stop is None:
            return
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        if self._should_stop():
            raise Stopped("stop requested")
