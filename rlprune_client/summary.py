"""The summary tables of a job's report, as ``rlprune run`` and ``rlprune jobs watch`` print them.

Plain rich on the report's dictionary: no torch, so it serves the client and ``rlprune run`` alike.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table


def report_summary(report: dict) -> Group:
    """The before / pruned / finetuned table of a job's report, with its baselines and how the search went."""
    table = Table(title=f"{report['name']}: {report['spec']['model']['arch']} on {report['dataset']['name']}")
    table.add_column("")
    for column in ("before", "pruned", "finetuned", "ratio"):
        table.add_column(column, justify="right")
    before, pruned, final = report["baseline"], report["pruned"], report["final"]
    rows = [
        ("accuracy", lambda s: f"{s['accuracy']:.2%}", lambda: f"{final['accuracy'] - before['accuracy']:+.2%}"),
        ("params", lambda s: f"{s['params'] / 1e6:.3f} M", lambda: f"{final['params'] / before['params']:.3f}x"),
        ("MACs", lambda s: f"{s['macs'] / 1e6:.2f} M", lambda: f"{final['macs'] / before['macs']:.3f}x"),
    ]
    for label, cell, ratio in rows:
        table.add_row(label, cell(before), cell(pruned), cell(final), ratio())
    for label, unpruned, finetuned, speedup in _latency_rows(report):
        table.add_row(label, unpruned, "", finetuned, speedup)
    budget = report.get("budget", {})
    if "latency_ms" in budget:  # a measured budget's section
        target, measured = budget["target"], budget["latency_ms"]
        table.add_row(f"latency on {target['device']}, batch {target['batch_size']} (ms)",
                      f"{measured['unpruned']:.2f}", "", f"{measured['pruned']:.2f}",
                      f"{budget['achieved']:.3f}x (table: {budget['predicted']:.3f}x, budget {budget['keep']:.3f}x)")
    for name, result in report.get("baselines", {}).items():
        table.add_row(f"{name} baseline accuracy", "", f"{result['pruned_accuracy']:.2%}",
                      f"{result['final_accuracy']:.2%}", "")
    return Group(table, search_summary(report["search"], report.get("finalists")))


def _latency_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """Per batch size: medians with their quartiles, and the speed-up as its interval allows."""
    latency = report.get("latency")
    if latency is None:  # nothing timed, or a report of an earlier version (medians only)
        before, final = report["baseline"].get("latency_ms", {}), report["final"].get("latency_ms", {})
        return [(f"latency {b} (ms)", f"{before[b]:.2f}", f"{final[b]:.2f}", f"{before[b] / final[b]:.2f}x")
                for b in before]
    rows = []
    for batch, section in latency["batches"].items():
        cells = [f"{m['median']:.2f} ({m['q1']:.2f}-{m['q3']:.2f})" for m in (section["unpruned_ms"],
                                                                               section["pruned_ms"])]
        speedup = section["speedup"]  # the interval is of the speed-up (unpruned over pruned)
        rows.append((f"latency batch {batch} (ms)", *cells,
                     f"{speedup['text']} [{speedup['low']:.2f}-{speedup['high']:.2f}x]"))
    if latency.get("busy"):
        rows.append(("latency measured on a busy machine", "", "", "noisy"))
    return rows


def search_summary(search: dict, finalists: dict | None = None) -> Table:
    """How the kept channels were found: evaluations, the proxy of the result, what the search cost, and,
    with a finalist stage, whether the search beat the uniform allocation on held-out validation images."""
    table = Table(title="search")
    for column in ("method", "evaluations", "proxy log-likelihood", "proxy accuracy", "seconds", "share of job"):
        table.add_column(column, justify="right")
    proxy = search.get("proxy", {}).get("held_out", {})
    seconds = search.get("seconds")
    table.add_row(
        search["method"], str(search.get("evaluations", "")),
        f"{proxy['log_likelihood']:.4f}" if proxy else "", f"{proxy['accuracy']:.2%}" if proxy else "",
        f"{seconds:.1f}" if seconds is not None else "",
        f"{search['share_of_job']:.1%}" if "share_of_job" in search else "")
    table.caption = "proxy: the returned network on held-out validation images, before finetuning"
    if finalists:
        table.caption += f"\nfinalists: {finalists['winner']} returned; {finalists['reason']}"
    return table
