"""Shared fixtures: tiny specs and datasets that keep the suite inside minutes on two CPU cores."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch

from .support.paths import CIFAR10_SUBSET, REPO
from .support.specs import tiny_spec

__all__ = ["CIFAR10_SUBSET", "REPO", "tiny_spec"]

# `make test` runs test files side by side (pytest-xdist, one process per core). Each of those processes,
# and every worker or server its tests start (they inherit OMP_NUM_THREADS), then gets its share of the
# cores: torch pools sized to the whole machine stall each other when several run at once (an epoch of
# 0.5 s took 14 to 22 s with two 2-thread workers on 2 cores).
SIDE_BY_SIDE = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 1) // SIDE_BY_SIDE)
if SIDE_BY_SIDE > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test with an id of its own, and files with a slow or heavy test first, each file's tests kept together
    and in order: run side by side, the long files then start at once and the short ones fill the gaps
    behind them, instead of a long file starting last and running alone."""
    _tell_schemathesis_operations_apart(items)
    repeated = sorted(nodeid for nodeid, count in Counter(item.nodeid for item in items).items() if count > 1)
    if repeated:  # pytest-xdist hands tests out by id: it would run one of each and report the rest nowhere
        raise pytest.UsageError(f"tests share an id: {', '.join(repeated)}")
    slow = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("heavy")}
    items.sort(key=lambda item: item.path not in slow)


def _tell_schemathesis_operations_apart(items: list[pytest.Item]) -> None:
    """schemathesis (4.32) names each operation's test ``test[GET /jobs]``, but pytest 9.2 builds a test's
    id from its original name and parametrize's parameters, which schemathesis does not use: every
    operation's test gets the same id. Give each its operation as parameters, as parametrize would. No
    public API sets an id after collection; the check above catches this breaking in a later release."""
    for item in items:
        label = getattr(item, "operation_label", None)
        if label is not None and item.id.params is None:
            item._id = item.id.with_params(label)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What tests measured with ``record_property`` (the hostile-load tests' latencies, codes and sizes), at
    the end of the output; also written as JSON to ``RLPRUNE_MEASURED_OUT`` when it is set."""
    measured = {f"{report.nodeid.split('::')[-1]} / {name}": value
                for outcome in ("passed", "failed") for report in terminalreporter.stats.get(outcome, [])
                if report.when == "call" for name, value in report.user_properties}
    if not measured:
        return
    terminalreporter.section("measured")
    for name, value in measured.items():
        terminalreporter.write_line(f"{name}: {json.dumps(value)}")
    if os.environ.get("RLPRUNE_MEASURED_OUT"):
        with open(os.environ["RLPRUNE_MEASURED_OUT"], "w") as out:
            json.dump(measured, out, indent=1)


@pytest.fixture(scope="session", autouse=True)
def _small_threads_from_the_start() -> None:
    """Before any module's fixtures run: a job a module fixture runs and one its test runs must see the same
    thread count, or their floating-point sums differ (a resumed run would then not match the one it resumes)."""
    torch.set_num_threads(min(2, THREADS))


@pytest.fixture(autouse=True)
def _small_threads() -> None:
    """Again for each test, in case one before it changed the count."""
    torch.set_num_threads(min(2, THREADS))
