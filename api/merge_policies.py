"""Merge policies through the API (Adobe Real-Time Customer Profile's
`/config/mergePolicies`): list, read, create, replace and delete.

A policy is listed with where it comes from: `config` (`TRAITFLOW_MERGE_POLICIES`,
read-only here: a 409 says to change the configuration) or `api` (kept in Redis,
`api.policy_store`). Any key may read them; only an admin key may change them. A
policy may only rank sources that ingest topics are bound to, as in the configuration.
The default policy is the configured one: the workers materialise its merge.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import Principal, authenticate
from api.errors import ApiError
from api.state import services
from attributes.policies import MergePolicy
from traitflow.config import Settings

router = APIRouter()

PATH = "/config/mergePolicies"
POLICY_ID = r"^[A-Za-z0-9_.-]{1,64}$"
#: a policy id in a path: letters, digits, '_', '.', '-', at most 64 (else a 400)
PolicyId = Annotated[str, Path(pattern=POLICY_ID, description="a merge policy id")]


class PolicyBody(BaseModel):
    """A policy as sent: `{"kind": "source_precedence", "sources": ["crm", "web"]}`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["timestamp_ordered", "source_precedence"] = "timestamp_ordered"
    sources: list[str] = []


class NewPolicy(PolicyBody):
    id: str = Field(pattern=POLICY_ID)


def described(
    policy_id: str, policy: MergePolicy, settings: Settings, origin: str
) -> dict[str, Any]:
    return {
        "id": policy_id,
        "kind": policy.kind,
        "sources": policy.sources,
        "default": policy_id == settings.default_merge_policy,
        "origin": origin,
    }


def _admin(principal: Principal) -> None:
    if not principal.admin:
        raise ApiError(403, "changing merge policies needs an admin key")


def _valid(body: PolicyBody, settings: Settings) -> MergePolicy:
    """The policy, checked as the configuration's are (a 400 says what is wrong)."""
    try:
        policy = MergePolicy(kind=body.kind, sources=body.sources)
    except ValidationError as exc:
        problems = (str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
        raise ApiError(400, "; ".join(problems)) from None
    bound = set(settings.sources.values())
    if unbound := [source for source in policy.sources if source not in bound]:
        raise ApiError(
            400,
            f"no ingest topic is bound to source {unbound[0]!r} "
            f"(sources: {', '.join(sorted(bound)) or 'none'})",
        )
    return policy


def _not_configured(policy_id: str, settings: Settings) -> None:
    if policy_id in settings.merge_policies:
        raise ApiError(
            409,
            f"merge policy {policy_id!r} is configured (TRAITFLOW_MERGE_POLICIES): change it there",
        )


def _to_store(
    request: Request, principal: Principal, policy_id: str, body: PolicyBody
) -> tuple[Settings, MergePolicy]:
    """The checks of a create or a replace, in this order: an admin key (403), the
    policy sent (400), an id that is not a configured one (409)."""
    _admin(principal)
    settings = services(request).settings
    policy = _valid(body, settings)
    _not_configured(policy_id, settings)
    return settings, policy


@router.get(PATH, summary="List merge policies")
async def list_policies(
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    settings = services(request).settings
    policies = services(request).policies
    children = [described(i, p, settings, "config") for i, p in settings.merge_policies.items()]
    stored = await policies.all()
    children += [described(i, p, settings, "api") for i, p in stored.items()]
    return {"_page": {"totalCount": len(children)}, "children": children}


@router.get(PATH + "/{policy_id}", summary="Read a merge policy")
async def read_policy(
    policy_id: PolicyId,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    settings = services(request).settings
    if (policy := settings.merge_policies.get(policy_id)) is not None:
        return described(policy_id, policy, settings, "config")
    if (policy := await services(request).policies.get(policy_id)) is not None:
        return described(policy_id, policy, settings, "api")
    raise ApiError(404, f"merge policy {policy_id!r} not found")


@router.post(PATH, status_code=201, summary="Create a merge policy")
async def create_policy(
    body: NewPolicy,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    settings, policy = _to_store(request, principal, body.id, body)
    if not await services(request).policies.create(body.id, policy):
        raise ApiError(409, f"merge policy {body.id!r} exists: replace it with PUT")
    return described(body.id, policy, settings, "api")


@router.put(PATH + "/{policy_id}", summary="Create or replace a merge policy")
async def replace_policy(
    policy_id: PolicyId,
    body: PolicyBody,
    request: Request,
    response: Response,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    settings, policy = _to_store(request, principal, policy_id, body)
    if not await services(request).policies.replace(policy_id, policy):
        response.status_code = 201
    return described(policy_id, policy, settings, "api")


@router.delete(PATH + "/{policy_id}", status_code=204, summary="Delete a merge policy")
async def delete_policy(
    policy_id: PolicyId,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    _admin(principal)
    _not_configured(policy_id, services(request).settings)
    if not await services(request).policies.remove(policy_id):
        raise ApiError(404, f"merge policy {policy_id!r} not found")
    return Response(status_code=204)
