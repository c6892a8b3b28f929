"""What the route modules share: the documented problem responses, paging links, and the tenant's
resource-or-404."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlencode

from sqlalchemy.orm import Session, sessionmaker

from store.models import ID

from ..problems import PROBLEM, Problem

MAX_ID = 2**63 - 1  # the largest event or attempt id a query parameter may name
T = TypeVar("T")


def responses(what: str) -> dict[int | str, dict]:
    """The problem responses every authenticated route can give, for a router of ``what``s."""
    return {401: {"description": "no valid API key", **PROBLEM},
            404: {"description": f"no such {what} of yours", **PROBLEM},
            422: {"description": "invalid request; `errors` names each field", **PROBLEM},
            503: {"description": "overloaded or a backing service is down; see Retry-After", **PROBLEM}}


def next_link(path: str, **query: object) -> str:
    """The URL of the next page: ``path`` with the query parameters that are not None."""
    return f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"


def owned(sessions: sessionmaker[Session], lookup: Callable[[Session, str], T | None], raw_id: str,
          not_found: Problem) -> T:
    """The tenant's resource ``lookup`` finds by ``raw_id`` (its tenant bound in ``lookup``); a malformed id,
    a missing resource and another tenant's are the same 404."""
    if not ID.fullmatch(raw_id):
        raise not_found
    with sessions() as session:
        found = lookup(session, raw_id)
    if found is None:
        raise not_found
    return found
