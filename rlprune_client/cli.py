"""``rlprune jobs submit|list|show|watch|cancel|download``: the API from a terminal, through :class:`Client`.

The server is ``--url`` or ``RLPRUNE_URL`` (default the ``rlprune serve`` address), the key ``--api-key``
or ``RLPRUNE_API_KEY``. Exit status: 0 when the command (or the watched job) succeeded, 1 when the API
refused or the job did not succeed, 2 for a command line or spec file that cannot be used, 130 when
interrupted; each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from .client import Client
from .errors import ApiError
from .models import FINISHED, Event, Job
from .summary import report_summary

DEFAULT_URL = "http://127.0.0.1:8000"
err = Console(stderr=True)


class UsageError(Exception):
    """A command line or a spec file that cannot be used (exit status 2)."""


def add_jobs_command(commands: argparse._SubParsersAction) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=os.environ.get("RLPRUNE_URL", DEFAULT_URL),
                            help="the API (default: $RLPRUNE_URL, else %(default)s)")
    connection.add_argument("--api-key", default=os.environ.get("RLPRUNE_API_KEY"),
                            help="an API key (default: $RLPRUNE_API_KEY)")
    jobs = commands.add_parser("jobs", help="submit, follow and download jobs of a running rlprune API")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = actions.add_parser("submit", parents=[connection],
                                help="submit a job spec (a JSON or YAML file, - for stdin)")
    submit.add_argument("spec")
    submit.add_argument("--wait", action="store_true", help="follow the job to its end, as watch does")
    submit.add_argument("--idempotency-key", help="repeat-safe submission: the same key returns the same job")
    submit.set_defaults(handler=run, action=_submit)
    listing = actions.add_parser("list", parents=[connection], help="your jobs, newest first")
    listing.add_argument("--status", help="only jobs in this state")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default %(default)s)")
    listing.set_defaults(handler=run, action=_list)
    for name, handler, text in (("show", _show, "a job as JSON"), ("watch", _watch, "follow a job to its end"),
                                ("cancel", _cancel, "cancel a queued or running job")):
        action = actions.add_parser(name, parents=[connection], help=text)
        action.add_argument("id")
        action.set_defaults(handler=run, action=handler)
    download = actions.add_parser("download", parents=[connection], help="download artifacts, verifying SHA-256")
    download.add_argument("id")
    download.add_argument("name", nargs="?", default="all", help="an artifact's name (default: all of them)")
    download.add_argument("--out", type=Path, default=Path("."), help="folder to write to (default: here)")
    download.set_defaults(handler=run, action=_download)


def run(args: argparse.Namespace) -> int:
    """Run a ``jobs`` command; failures become one line on stderr and the exit status."""
    try:
        if not args.api_key:
            raise UsageError("no API key: pass --api-key or set RLPRUNE_API_KEY")
        with Client(args.url, args.api_key) as client:
            return args.action(client, args)
    except UsageError as exc:
        print(f"rlprune: error: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"rlprune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rlprune: interrupted (the job goes on; `rlprune jobs watch ID` follows it again)", file=sys.stderr)
        return 130


def _read_spec(source: str) -> dict[str, Any]:
    import yaml  # JSON is YAML, so one parser reads both

    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        spec = yaml.safe_load(text)
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{source} is not JSON or YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(spec, dict):
        raise UsageError(f"{source} does not hold a spec (a mapping of fields)")
    return spec


def _submit(client: Client, args: argparse.Namespace) -> int:
    job = client.submit(_read_spec(args.spec), idempotency_key=args.idempotency_key)
    print(job.id)
    return _follow(client, job) if args.wait else 0


def _list(client: Client, args: argparse.Namespace) -> int:
    """A table on a terminal; piped, tab-separated lines (one job each, no header) for scripts."""
    columns = ("id", "name", "status", "stage", "progress", "accuracy", "MACs kept", "created")
    rows = []
    for job in client.list(args.status, page_size=min(max(args.limit, 1), 200)):
        if len(rows) >= args.limit:
            break
        before, final = _figure(job, "baseline", "accuracy"), _figure(job, "final", "accuracy")
        accuracy = f"{before:.2%} → {final:.2%}" if before is not None and final is not None else ""
        macs = _figure(job, "final", "macs"), _figure(job, "baseline", "macs")
        rows.append((job.id, job.name, job.status, job.stage or "", f"{job.progress:.0%}", accuracy,
                     f"{macs[0] / macs[1]:.3f}" if None not in macs else "", f"{job.created_at:%Y-%m-%d %H:%M}"))
    out = Console()
    if not out.is_terminal:
        print("\n".join("\t".join(row) for row in rows))
        return 0
    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    out.print(table)
    return 0


def _figure(job: Job, section: str, name: str) -> float | None:
    value = ((job.metrics or {}).get(section) or {}).get(name)
    return value if isinstance(value, int | float) else None


def _show(client: Client, args: argparse.Namespace) -> int:
    print(client.get(args.id).model_dump_json(indent=2))
    return 0


def _watch(client: Client, args: argparse.Namespace) -> int:
    return _follow(client, client.get(args.id))


def _cancel(client: Client, args: argparse.Namespace) -> int:
    print(client.cancel(args.id).status)
    return 0


def _download(client: Client, args: argparse.Namespace) -> int:
    for path in client.download(args.id, args.name, args.out):
        print(path)
    return 0


def _follow(client: Client, job: Job) -> int:
    """A bar per stage while the job runs, then the summary table ``rlprune run`` prints."""
    with StageBars() as bars:
        job = client.wait(job.id, on_event=bars.show)
    if job.status != "succeeded":
        reason = (job.error or {}).get("message", "")
        print(f"rlprune: error: job {job.id} {job.status}" + (f": {reason}" if reason else ""), file=sys.stderr)
        return 1
    Console().print(report_summary({**client.report(job.id), "spec": job.spec}))
    return 0


class StageBars:
    """One progress bar per stage, filled from the events: epochs for pretrain and finetune, search steps
    for prune; a stage's bar completes when the next one starts."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("[bold]{task.fields[stage]:<9}"), BarColumn(),
                                 TextColumn("{task.percentage:>5.1f}%"), TimeElapsedColumn(),
                                 TextColumn("{task.description}"), console=err)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> StageBars:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def show(self, event: Event) -> None:
        if event.type in FINISHED or event.type == "completed":
            self._complete_all()
        if event.stage is None:  # the job's own events (accepted, completed): a line each
            self.progress.console.print(event.message)
            return
        if event.stage not in self.tasks:
            self._complete_all()
            self.tasks[event.stage] = self.progress.add_task(event.message, total=1.0, stage=event.stage)
        done = _fraction(event.data)
        self.progress.update(self.tasks[event.stage], description=event.message,
                             **({"completed": done} if done is not None else {}))

    def _complete_all(self) -> None:
        for task in self.tasks.values():
            self.progress.update(task, completed=1.0)


def _fraction(data: dict[str, Any]) -> float | None:
    for part, whole in (("epoch", "epochs"), ("step", "steps")):
        if isinstance(data.get(part), int) and isinstance(data.get(whole), int) and data[whole] > 0:
            return min(data[part] / data[whole], 1.0)
    return None
