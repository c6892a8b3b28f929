"""``rlprune``: ``run`` a job locally, ``serve`` the API with a worker, ``keys create`` an API key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlprune_core import cli as core_cli


def _settings(args: argparse.Namespace):
    from store.settings import Settings

    return Settings(data_dir=args.data_dir) if args.data_dir else Settings()


def _serve(args: argparse.Namespace) -> int:
    from .embedded import serve

    return serve(_settings(args), args.host, args.port)


def _create_key(args: argparse.Namespace) -> int:
    from .embedded import create_key

    print(create_key(_settings(args), args.name, args.tenant))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="rlprune", description="Shrink convnets by RL-driven channel pruning.")
    commands = root.add_subparsers(dest="command", required=True)
    core_cli.add_run_command(commands)
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", type=Path, default=None,
                          help="embedded store and artifacts (default: ./rlprune-data, or RLPRUNE_DATA_DIR)")
    serve = commands.add_parser("serve", parents=[data_dir], help="the API and one worker, on an embedded store")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", parents=[data_dir], help="create an API key and print it (only this once)")
    create.add_argument("--name", required=True)
    create.add_argument("--tenant", default=None, help="whose jobs the key sees (default: the name)")
    create.set_defaults(handler=_create_key)
    return root


def main(argv: list[str] | None = None) -> int:
    return core_cli.dispatch(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
