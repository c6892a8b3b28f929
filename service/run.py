"""``rlprune run SPEC --out DIR``: run (or resume) a prune job locally, with a progress bar and the summary
tables; and how every ``rlprune`` command turns a user-facing error into one line and an exit status."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rlprune_client.summary import report_summary
from rlprune_core.errors import RlpruneError, SpecError
from rlprune_core.spec import JobSpec

console = Console(stderr=True)


def add_run_command(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run a prune job from a JSON/YAML spec; re-run to resume")
    run.add_argument("spec", type=Path, help="job spec file (JSON or YAML)")
    run.add_argument("--out", type=Path, required=True, help="work folder: checkpoints and artifacts")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    spec = JobSpec.from_file(args.spec)
    try:  # torch loads here, after the spec is known to be good
        from rlprune_core.events import Event, EventType, Stopped
        from rlprune_core.pipeline import run_pipeline
    except ModuleNotFoundError as missing:
        raise RlpruneError(f"rlprune run needs the worker extra ({missing.name} is not installed): "
                           "pip install 'rlprune[worker]'") from None

    with Progress(TextColumn("[bold]{task.fields[stage]:<9}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), TextColumn("{task.description}"), console=console,
                  disable=args.quiet) as progress:
        task = progress.add_task("starting", total=1.0, stage="")

        def on_event(event: Event) -> None:
            progress.update(task, completed=event.progress, description=event.message,
                            stage=event.stage or "done")
            if event.type in (EventType.STAGE, EventType.RESUMED, EventType.COMPLETED, EventType.WARNING):
                progress.console.print(event.message)

        try:
            report = run_pipeline(spec, args.out, on_event)
        except (KeyboardInterrupt, Stopped):
            console.print(f"interrupted; run the same command again to resume from {args.out}")
            return 130
    Console().print(report_summary(report))
    Console().print(f"artifacts in {args.out}: " + ", ".join(a["name"] for a in report["artifacts"]) + ", report.json")
    return 0


def dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; a user-facing error becomes one line on stderr and a non-zero exit."""
    # Exporters and optional-dependency probes are chatty; a CLI user wants the progress bar and the table.
    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        return args.handler(args)
    except RlpruneError as exc:
        print(f"rlprune: error: {exc}", file=sys.stderr)
        return 2 if exc.code == SpecError.code else 1
