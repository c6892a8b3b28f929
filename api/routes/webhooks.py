"""/webhooks: a tenant's endpoints for job notifications, and every attempt at delivering to them.

A URL is checked when it is registered (and again by the worker before each attempt): http or https, no
user name or password, and a host that resolves to public addresses only, unless the operator allows
private ones. Another tenant's endpoint is a 404 on every route.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from store import webhooks as store
from store.db import transaction
from store.models import ID, WebhookEndpoint

from ..auth import TenantDep
from ..problems import Problem, invalid
from ..schemas import DeliveryOut, DeliveryPage, WebhookCreated, WebhookOut
from .jobs import MAX_ID, PROBLEM

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses={
    401: {"description": "no valid API key", **PROBLEM}, 404: {"description": "no such webhook of yours", **PROBLEM},
    422: {"description": "invalid request; `errors` names each field", **PROBLEM},
    503: {"description": "overloaded or a backing service is down; see Retry-After", **PROBLEM}})
NOT_FOUND = Problem(404, "Not Found", "no such webhook")
Event = Literal[*store.EVENTS]  # type: ignore[valid-type]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=store.MAX_URL_CHARS, description="http(s) URL on a public address")
    events: list[Event] = Field(default=list(store.FINISH_EVENTS), min_length=1, max_length=len(store.EVENTS))

    @field_validator("url")
    @classmethod
    def _syntax(cls, url: str) -> str:
        """The syntax is checked with the body; whether the host is public needs DNS, in the handler."""
        store.parse_url(url)
        return url


def _endpoint(request: Request, tenant: str, webhook_id: str) -> WebhookEndpoint:
    if not ID.fullmatch(webhook_id):
        raise NOT_FOUND
    with request.app.state.sessions() as session:
        endpoint = store.get_endpoint(session, tenant, webhook_id)
    if endpoint is None:
        raise NOT_FOUND
    return endpoint


@router.post("", status_code=201, response_model=WebhookCreated, responses={
    429: {"description": "the tenant has as many webhooks as allowed", **PROBLEM}})
async def create(body: WebhookIn, request: Request, response: Response, tenant: TenantDep) -> WebhookCreated:
    """Register an endpoint. The answer holds the signing secret, shown this once."""
    settings = request.app.state.settings
    try:
        await run_in_threadpool(store.resolve, body.url, settings.webhook_allow_private)  # DNS blocks
    except store.BadUrl as exc:
        raise invalid("url", str(exc)) from exc

    def insert() -> WebhookEndpoint:
        with transaction(request.app.state.sessions) as session:
            return store.create_endpoint(session, tenant, body.url, body.events, settings.max_webhooks_per_tenant)

    try:
        endpoint = await run_in_threadpool(insert)
    except store.TooManyWebhooks as exc:
        raise Problem(429, "Too Many Requests", str(exc)) from exc
    response.headers["Location"] = f"/webhooks/{endpoint.id}"
    return WebhookCreated.of(endpoint)


@router.get("", response_model=list[WebhookOut])
def list_webhooks(request: Request, tenant: TenantDep) -> list[WebhookOut]:
    with request.app.state.sessions() as session:
        return [WebhookOut.of(e) for e in store.list_endpoints(session, tenant)]


@router.get("/{webhook_id}", response_model=WebhookOut)
def read(webhook_id: str, request: Request, tenant: TenantDep) -> WebhookOut:
    return WebhookOut.of(_endpoint(request, tenant, webhook_id))


@router.delete("/{webhook_id}", status_code=204)
def delete(webhook_id: str, request: Request, tenant: TenantDep) -> Response:
    """Its pending messages are dropped with it: nothing more is sent to it."""
    if not ID.fullmatch(webhook_id):
        raise NOT_FOUND
    with transaction(request.app.state.sessions) as session:
        if not store.delete_endpoint(session, tenant, webhook_id):
            raise NOT_FOUND
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
def deliveries(webhook_id: str, request: Request, tenant: TenantDep,
               after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> DeliveryPage:
    """Every attempt, oldest first; ``next`` links to the following page, as for a job's events."""
    _endpoint(request, tenant, webhook_id)
    with request.app.state.sessions() as session:
        page = store.attempts_after(session, webhook_id, after, limit)
    following = f"/webhooks/{webhook_id}/deliveries?{urlencode({'after': page[-1].id, 'limit': limit})}" \
        if len(page) == limit else None
    return DeliveryPage(items=[DeliveryOut.of(a) for a in page], next=following)
