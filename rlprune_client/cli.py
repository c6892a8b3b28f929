"""``rlprune jobs|datasets|checkpoints|webhooks ...``: the API from a terminal, through :class:`Client`.

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
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from .client import Client
from .errors import ApiError, NotAnArchive
from .models import FINISHED, Event, Job
from .summary import report_summary

DEFAULT_URL = "http://127.0.0.1:8000"
err = Console(stderr=True)


class UsageError(Exception):
    """A command line or a spec file that cannot be used (exit status 2)."""


def add_client_commands(commands: argparse._SubParsersAction) -> None:
    """``jobs``, ``datasets``, ``checkpoints`` and ``webhooks``: every command that talks to a running API."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=os.environ.get("RLPRUNE_URL", DEFAULT_URL),
                            help="the API (default: $RLPRUNE_URL, else %(default)s)")
    connection.add_argument("--api-key", default=os.environ.get("RLPRUNE_API_KEY"),
                            help="an API key (default: $RLPRUNE_API_KEY)")

    def command(group: argparse._SubParsersAction, name: str, action, text: str, *ids: str) -> argparse.ArgumentParser:
        parser = group.add_parser(name, parents=[connection], help=text)
        for argument in ids:
            parser.add_argument(argument)
        parser.set_defaults(handler=run, action=action)
        return parser

    jobs = commands.add_parser("jobs", help="submit, follow and download jobs of a running rlprune API")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = command(actions, "submit", _submit, "submit a job spec (a JSON or YAML file, - for stdin)", "spec")
    submit.add_argument("--wait", action="store_true", help="follow the job to its end, as watch does")
    submit.add_argument("--idempotency-key", help="repeat-safe submission: the same key returns the same job")
    listing = command(actions, "list", _list, "your jobs, newest first")
    listing.add_argument("--status", help="only jobs in this state")
    listing.add_argument("--name", help="only jobs whose name contains this (ignoring case)")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default %(default)s)")
    command(actions, "show", _show, "a job as JSON", "id")
    command(actions, "watch", _watch, "follow a job to its end", "id")
    command(actions, "cancel", _cancel, "cancel a queued or running job", "id")
    command(actions, "delete", _delete_job, "delete a finished job and its files", "id")
    download = command(actions, "download", _download, "download artifacts, verifying SHA-256", "id")
    download.add_argument("name", nargs="?", default="all", help="an artifact's name (default: all of them)")
    download.add_argument("--out", type=Path, default=Path("."), help="folder to write to (default: here)")

    for kind, what in (("datasets", "image-folder archives (zip, tar, tar.gz)"),
                       ("checkpoints", "safetensors state dicts")):
        group = commands.add_parser(kind, help=f"upload, list and delete your {what}")
        uploads = group.add_subparsers(dest=f"{kind}_command", required=True)
        command(uploads, "upload", _upload, "upload a file; prints its id (a spec names it upload:<id>)",
                "file").set_defaults(kind=kind)
        command(uploads, "list", _list_uploads, f"your {kind}, oldest first").set_defaults(kind=kind)
        command(uploads, "delete", _delete_upload, "delete one (refused while a job uses it)",
                "id").set_defaults(kind=kind)

    webhooks = commands.add_parser("webhooks", help="receivers the API notifies of your jobs")
    hooks = webhooks.add_subparsers(dest="webhooks_command", required=True)
    add = command(hooks, "add", _add_webhook, "register a receiver; prints its id and signing secret (once)",
                  "receiver")  # not "url", which names the API
    add.add_argument("--events", nargs="+", help="job.succeeded, job.failed, job.cancelled, job.stage "
                     "(default: the first three)")
    command(hooks, "list", _list_webhooks, "your receivers")
    command(hooks, "delete", _delete_webhook, "remove a receiver and its pending messages", "id")
    command(hooks, "test", _test_webhook, "send the receiver a signed webhook.test message; prints its id", "id")
    command(hooks, "deliveries", _deliveries, "every delivery attempt to a receiver, oldest first", "id")


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
    except yaml.YAMLError as exc:  # where the parser stopped, as rlprune_core.spec says it (not imported: no torch)
        mark, reason = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UsageError(f"{source} is not JSON or YAML{where}: {reason}") from exc
    if not isinstance(spec, dict):
        raise UsageError(f"{source} does not hold a spec (a mapping of fields)")
    return spec


def _submit(client: Client, args: argparse.Namespace) -> int:
    job = client.submit(_read_spec(args.spec), idempotency_key=args.idempotency_key)
    print(job.id)
    return _follow(client, job) if args.wait else 0


def _list(client: Client, args: argparse.Namespace) -> int:
    columns = ("id", "name", "status", "stage", "progress", "accuracy", "MACs kept", "created")
    rows = []
    for job in client.list(args.status, name=args.name, page_size=min(max(args.limit, 1), 200)):
        if len(rows) >= args.limit:
            break
        before, final = _figure(job, "baseline", "accuracy"), _figure(job, "final", "accuracy")
        accuracy = f"{before:.2%} → {final:.2%}" if before is not None and final is not None else ""
        macs = _figure(job, "final", "macs"), _figure(job, "baseline", "macs")
        rows.append((job.id, job.name, job.status, job.stage or "", f"{job.progress:.0%}", accuracy,
                     f"{macs[0] / macs[1]:.3f}" if None not in macs else "", f"{job.created_at:%Y-%m-%d %H:%M}"))
    return _table(columns, rows)


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


def _delete_job(client: Client, args: argparse.Namespace) -> int:
    client.delete(args.id)
    return 0


def _download(client: Client, args: argparse.Namespace) -> int:
    for path in client.download(args.id, args.name, args.out):
        print(path)
    return 0


def _upload(client: Client, args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"cannot read {args.file}: no such file")
    send = client.upload_dataset if args.kind == "datasets" else client.upload_checkpoint
    with Progress(TextColumn("[bold]upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TextColumn("{task.description}"), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        task = progress.add_task("", total=path.stat().st_size)
        try:
            uploaded = send(path, on_progress=lambda sent, total: progress.update(
                task, completed=sent, description="" if sent < total else "checking"))
        except NotAnArchive as exc:  # a pydantic ValidationError is a ValueError too: not caught here
            raise UsageError(str(exc)) from exc
    print(uploaded.id)
    return 0


def _list_uploads(client: Client, args: argparse.Namespace) -> int:
    if args.kind == "datasets":
        rows = [(d.id, ", ".join(d.classes), " ".join(f"{k} {v}" for k, v in d.counts.items()), f"{d.bytes:,}",
                 f"{d.created_at:%Y-%m-%d %H:%M}") for d in client.datasets()]
        return _table(("id", "classes", "images", "bytes", "created"), rows)
    rows = [(c.id, str(c.tensors), f"{c.bytes:,}", c.sha256[:16], f"{c.created_at:%Y-%m-%d %H:%M}")
            for c in client.checkpoints()]
    return _table(("id", "tensors", "bytes", "sha256", "created"), rows)


def _delete_upload(client: Client, args: argparse.Namespace) -> int:
    (client.delete_dataset if args.kind == "datasets" else client.delete_checkpoint)(args.id)
    return 0


def _add_webhook(client: Client, args: argparse.Namespace) -> int:
    created = client.add_webhook(args.receiver, args.events)
    print(f"{created.id}\t{created.secret}")
    return 0


def _list_webhooks(client: Client, args: argparse.Namespace) -> int:
    rows = [(w.id, w.url, " ".join(w.events), f"{w.created_at:%Y-%m-%d %H:%M}") for w in client.webhooks()]
    return _table(("id", "url", "events", "created"), rows)


def _delete_webhook(client: Client, args: argparse.Namespace) -> int:
    client.delete_webhook(args.id)
    return 0


def _test_webhook(client: Client, args: argparse.Namespace) -> int:
    print(client.test_webhook(args.id).id)
    return 0


def _deliveries(client: Client, args: argparse.Namespace) -> int:
    rows = [(f"{d.at:%Y-%m-%d %H:%M:%S}", d.event, d.job_id, str(d.attempt), d.status,
             "" if d.response_status is None else str(d.response_status), d.error or "")
            for d in client.deliveries(args.id)]
    return _table(("at", "event", "job", "attempt", "status", "HTTP", "error"), rows)


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> int:
    """A table on a terminal; piped, tab-separated lines (one row each, no header) for scripts."""
    out = Console()
    if not out.is_terminal:
        print("\n".join("\t".join(row) for row in rows))
        return 0
    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    out.print(table)
    return 0


def _follow(client: Client, job: Job) -> int:
    """Where it stands while queued, a bar per stage while it runs, then the summary ``rlprune run`` prints."""
    if job.status == "queued" and (ahead := client.queue_place(job.id).ahead) is not None:
        err.print(f"queued: {ahead} job{'s' if ahead != 1 else ''} ahead of it" if ahead else
                  "queued: next for a free worker")
    with StageBars() as bars:
        job = client.wait(job.id, on_event=bars.show)
    if job.status != "succeeded":
        reason = (job.error or {}).get("message", "")
        print(f"rlprune: error: job {job.id} {job.status}" + (f": {reason}" if reason else ""), file=sys.stderr)
        return 1
    Console().print(report_summary({**client.report(job.id), "spec": job.spec}))
    return 0


class StageBars:
    """Progress bars filled from the events: epochs for pretrain and finetune, search steps for prune. Each
    network a stage trains gets a bar of its own (the returned network, each finalist, each baseline), so a
    bar never runs backwards; a bar completes when the next one starts."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("[bold]{task.fields[label]:<9}"), BarColumn(),
                                 TextColumn("{task.percentage:>5.1f}%"), TimeElapsedColumn(),
                                 TextColumn("{task.description}"), console=err)
        self.tasks: list[TaskID] = []
        self.current: dict[str, tuple[TaskID, str | None]] = {}  # stage -> its latest bar and that bar's run

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
        task = self._bar(event.stage, event.data.get("run") if isinstance(event.data.get("run"), str) else None)
        done = _fraction(event.data)
        self.progress.update(task, description=event.message, **({"completed": done} if done is not None else {}))

    def _bar(self, stage: str, run: str | None) -> TaskID:
        """The bar for this stage and run: a stage's first bar takes the first run named in it, and each
        later run starts a new bar."""
        current = self.current.get(stage)
        if current is None:
            self._complete_all()
        elif run is None or run == current[1]:
            return current[0]
        elif current[1] is None:  # the stage's bar, started before any run was named: now that run's
            self.current[stage] = (current[0], run)
            return current[0]
        else:
            self.progress.update(current[0], completed=1.0)
        label = stage if run is None or run == "model" else f"{stage} · {run}"
        task = self.progress.add_task("", total=1.0, label=label)
        self.tasks.append(task)
        self.current[stage] = (task, run)
        return task

    def _complete_all(self) -> None:
        for task in self.tasks:
            self.progress.update(task, completed=1.0)


def _fraction(data: dict[str, Any]) -> float | None:
    for part, whole in (("epoch", "epochs"), ("step", "steps")):
        if isinstance(data.get(part), int) and isinstance(data.get(whole), int) and data[whole] > 0:
            return min(data[part] / data[whole], 1.0)
    return None
