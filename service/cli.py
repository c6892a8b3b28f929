"""``rlprune``: ``run`` a job locally, ``serve`` the API with a worker, ``keys create|list|revoke``, and
``jobs``, ``datasets``, ``checkpoints`` and ``webhooks`` against a running API."""

from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import version
from pathlib import Path

from rlprune_client.cli import add_client_commands

from .run import add_run_command, dispatch


def _settings(args: argparse.Namespace):
    from store.settings import Settings

    return Settings(data_dir=args.data_dir) if args.data_dir else Settings()


def _serve(args: argparse.Namespace) -> int:
    from .embedded import serve

    return serve(_settings(args), args.host, args.port, args.rotate_key)


def _create_key(args: argparse.Namespace) -> int:
    from .embedded import create_key

    key_id, key = create_key(_settings(args), args.name, args.tenant, rotate=args.rotate)
    print(key)
    print(f"key id {key_id} for tenant {args.tenant}", file=sys.stderr)
    return 0


def _list_keys(args: argparse.Namespace) -> int:
    from .embedded import list_keys

    for key_id, tenant, name, created, revoked in list_keys(_settings(args)):
        print(f"{key_id}  tenant={tenant}  name={name}  created={created}  revoked={revoked or '-'}")
    return 0


def _revoke_keys(args: argparse.Namespace) -> int:
    from .embedded import revoke_keys

    if not (args.id or args.name or args.tenant):
        print("rlprune: error: name the keys to revoke with --id, --name or --tenant", file=sys.stderr)
        return 2
    count = revoke_keys(_settings(args), key_id=args.id, name=args.name, tenant=args.tenant)
    print(f"revoked {count} key{'s' if count != 1 else ''}")
    return 0 if count else 1


def _tenant(text: str) -> str:
    """Tenants are names an operator types: letters, digits, '.', '_', '-', up to 200."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", text):
        raise argparse.ArgumentTypeError("a tenant is letters, digits, '.', '_' and '-' (up to 200)")
    return text


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="rlprune", description="Shrink convnets by RL-driven channel pruning.")
    root.add_argument("--version", action="version", version=f"rlprune {version('rlprune')}")
    commands = root.add_subparsers(dest="command", required=True)
    add_run_command(commands)
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", type=Path, default=None,
                          help="embedded store and artifacts (default: ./rlprune-data, or RLPRUNE_DATA_DIR)")
    serve = commands.add_parser("serve", parents=[data_dir], help="the API and one worker, on an embedded store")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--rotate-key", action="store_true", help="revoke the kept serve key and print a new one")
    serve.set_defaults(handler=_serve)
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", parents=[data_dir], help="create an API key and print it (only this once)")
    create.add_argument("--tenant", required=True, type=_tenant, help="whose jobs the key sees")
    create.add_argument("--name", required=True, help="what the key is for, e.g. the client's name")
    create.add_argument("--rotate", action="store_true", help="revoke the tenant's live keys of this name")
    create.set_defaults(handler=_create_key)
    listing = keys.add_parser("list", parents=[data_dir], help="list keys (ids, tenants, names; never the keys)")
    listing.set_defaults(handler=_list_keys)
    revoke = keys.add_parser("revoke", parents=[data_dir], help="revoke keys by id, name and/or tenant")
    revoke.add_argument("--id")
    revoke.add_argument("--name")
    revoke.add_argument("--tenant", type=_tenant)
    revoke.set_defaults(handler=_revoke_keys)
    add_client_commands(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    return dispatch(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
