"""/webhooks: a tenant's endpoints for job notifications, and every attempt at delivering to them.

A URL is checked when it is registered (and again by the worker before each attempt): http or https, no
user name or password, and a host that resolves to public addresses only, unless the operator allows
private ones. Another tenant's endpoint is a 404 on every route.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from store import receivers, webhooks
from store.db import transaction
from store.models import ID, WebhookEndpoint

from ..auth import TenantDep
from ..problems import PROBLEM, Problem, invalid
from ..schemas import DeliveryOut, DeliveryPage, WebhookCreated, WebhookOut, WebhookTestOut
from ..services import Services, ServicesDep
from .common import MAX_ID, next_link, owned, responses

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=responses("webhook"))
NOT_FOUND = Problem(404)
Event = Literal[*webhooks.EVENTS]  # type: ignore[valid-type]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=receivers.MAX_URL_CHARS, description="http(s) URL on a public address")
    events: list[Event] = Field(default=list(webhooks.FINISH_EVENTS), min_length=1, max_length=len(webhooks.EVENTS))

    @field_validator("url")
    @classmethod
    def _syntax(cls, url: str) -> str:
        """The syntax is checked with the body; whether the host is public needs DNS, in the handler."""
        receivers.parse_url(url)
        return url


def _endpoint(services: Services, tenant: str, webhook_id: str) -> WebhookEndpoint:
    return owned(services.sessions, lambda session, id_: webhooks.get_endpoint(session, tenant, id_), webhook_id,
                 NOT_FOUND)


@router.post("", status_code=201, response_model=WebhookCreated, responses={
    429: {"description": "the tenant has as many webhooks as allowed", **PROBLEM}})
async def create(body: WebhookIn, response: Response, tenant: TenantDep, services: ServicesDep) -> WebhookCreated:
    """Register an endpoint. The answer holds the signing secret, shown this once."""
    settings = services.settings
    try:
        await run_in_threadpool(receivers.check_receiver, body.url, settings.webhook_allow_private)  # DNS blocks
    except receivers.BadUrl as exc:
        raise invalid("url", str(exc)) from exc

    def insert() -> WebhookEndpoint:
        with transaction(services.sessions) as session:
            return webhooks.create_endpoint(session, tenant, body.url, body.events, settings.max_webhooks_per_tenant)

    try:
        endpoint = await run_in_threadpool(insert)
    except webhooks.TooManyWebhooks as exc:
        raise Problem(429, str(exc)) from exc
    response.headers["Location"] = f"/webhooks/{endpoint.id}"
    return WebhookCreated.of(endpoint)


@router.get("", response_model=list[WebhookOut], name="list")
def list_webhooks(tenant: TenantDep, services: ServicesDep) -> list[WebhookOut]:
    with services.sessions() as session:
        return [WebhookOut.of(e) for e in webhooks.list_endpoints(session, tenant)]


@router.get("/{webhook_id}", response_model=WebhookOut)
def read(webhook_id: str, tenant: TenantDep, services: ServicesDep) -> WebhookOut:
    return WebhookOut.of(_endpoint(services, tenant, webhook_id))


@router.delete("/{webhook_id}", status_code=204)
def delete(webhook_id: str, tenant: TenantDep, services: ServicesDep) -> Response:
    """Its pending messages are dropped with it: nothing more is sent to it."""
    if not ID.fullmatch(webhook_id):
        raise NOT_FOUND
    with transaction(services.sessions) as session:
        if not webhooks.delete_endpoint(session, tenant, webhook_id):
            raise NOT_FOUND
    return Response(status_code=204)


@router.post("/{webhook_id}/test", status_code=202, response_model=WebhookTestOut, responses={
    409: {"description": "the webhook's previous test event is still waiting to be sent", **PROBLEM}})
def send_test(webhook_id: str, tenant: TenantDep, services: ServicesDep) -> WebhookTestOut:
    """Queue a signed ``webhook.test`` message to this receiver, whatever events it asked for; a worker sends
    it, and its attempts appear under ``/deliveries`` like any other."""
    if not ID.fullmatch(webhook_id):
        raise NOT_FOUND
    try:
        with transaction(services.sessions) as session:
            message = webhooks.enqueue_test(session, tenant, webhook_id)
            if message is None:
                raise NOT_FOUND
            return WebhookTestOut.of(message)
    except webhooks.TestPending as exc:
        raise Problem(409, str(exc)) from exc


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
def deliveries(webhook_id: str, tenant: TenantDep, services: ServicesDep,
               after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> DeliveryPage:
    """Every attempt, oldest first; ``next`` links to the following page, as for a job's events."""
    _endpoint(services, tenant, webhook_id)
    with services.sessions() as session:
        page = webhooks.attempts_after(session, webhook_id, after, limit)
    following = next_link(f"/webhooks/{webhook_id}/deliveries", after=page[-1].id, limit=limit) \
        if len(page) == limit else None
    return DeliveryPage(items=[DeliveryOut.of(a) for a in page], next=following)
