"""The report's summary table: the measured-latency row appears for a measured budget's section and only there,
recognised by what the section holds (the client cannot ask the core which budgets are measured)."""

import pytest
from rich.console import Console

from rlprune_client.summary import report_summary

COUNTS = {"accuracy": 0.9, "params": 2e6, "macs": 4e7}
MEASURED = {"metric": "latency", "keep": 0.5, "achieved": 0.48, "predicted": 0.47,
            "target": {"device": "cpu", "batch_size": 1}, "latency_ms": {"unpruned": 2.0, "pruned": 0.96}}


def _printed(budget: dict) -> str:
    report = {"name": "job", "spec": {"model": {"arch": "vgg11"}}, "dataset": {"name": "digits"},
              "baseline": COUNTS, "pruned": COUNTS, "final": COUNTS, "budget": budget,
              "search": {"method": "l1"}}
    console = Console(record=True, width=200)
    console.print(report_summary(report))
    return console.export_text()


@pytest.mark.parametrize(("budget", "shown"), [(MEASURED, True), ({"metric": "macs", "keep": 0.5, "achieved": 0.49},
                                                                     False)])
def test_the_measured_latency_row_follows_the_budget_section(budget, shown):
    printed = _printed(budget)
    assert ("latency on cpu, batch 1 (ms)" in printed) == shown
    if shown:
        assert "0.480x (table: 0.470x, budget 0.500x)" in printed
