"""Treasure Data personalization services, offers and tokens through the API.

An admin key (`traitflow keys create --admin`) may list, create, replace and delete
services, their offers and tokens; any other key gets a 403, as for merge policies.
Services of the personalization file are listed with `origin: config` and cannot be
changed here (409: change the file). A token is made here, never sent: the answer
carries the whole `WP13n-Token` value once, and only the SHA-256 of its secret is
kept (`api.keys` does the same for API keys). A service has at most 50 tokens.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import Principal, authenticate
from api.errors import ApiError
from api.state import services
from api.td_services import Personalization
from attributes.expressions import ExpressionError
from attributes.offers import (
    MAX_TOKENS,
    NAME,
    InvalidService,
    OfferSpec,
    ServiceSpec,
    TokenSpec,
    compile_offer,
    hash_token,
)

router = APIRouter()

PATH = "/v1/personalization/services"
Name = Annotated[str, Path(pattern=NAME, description="a name: letters, digits, '_.-'")]


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")


def problems(exc: ValidationError) -> str:
    """A body's problems as one message: each field's path and what is wrong."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: "
        + str(error["msg"]).removeprefix("Value error, ")
        for error in exc.errors()
    )


def _admin(request: Request, principal: Principal) -> Personalization:
    if not principal.admin:
        raise ApiError(403, "personalization services need an admin key")
    return services(request).personalization


def _not_configured(personalization: Personalization, name: str) -> None:
    if name in personalization.configured:
        raise ApiError(
            409, f"service {name!r} is configured (TRAITFLOW_PERSONALIZATION_FILE): change it there"
        )


def described(spec: ServiceSpec, origin: str) -> dict[str, Any]:
    """A service as listed: its tokens by instance id only, never their digests."""
    shown = spec.model_dump(exclude={"tokens"})
    shown["tokens"] = [{"instance_id": token.instance_id} for token in spec.tokens]
    shown["origin"] = origin
    return shown


@router.get(PATH, summary="List personalization services")
async def list_services(
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    personalization = _admin(request, principal)
    listed = [described(s.spec, "config") for s in personalization.configured.values()]
    stored = await personalization.store.all()
    listed += [
        described(spec, "api")
        for name, spec in stored.items()
        if name not in personalization.configured
    ]
    return {"services": listed}


@router.put(PATH + "/{name}", summary="Create or replace a personalization service")
async def put_service(
    name: Name,
    body: dict[str, Any],
    request: Request,
    response: Response,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    """Its own fields and offers; tokens are made with `POST .../tokens`, and a
    replaced service keeps its tokens (and its offers unless the body lists some)."""
    personalization = _admin(request, principal)
    _not_configured(personalization, name)
    if "tokens" in body:
        raise ApiError(400, f"tokens are made with POST {PATH}/{name}/tokens")
    try:
        spec = ServiceSpec.model_validate({**body, "name": name})
        personalization.compile(spec)
    except ValidationError as exc:
        raise ApiError(400, problems(exc)) from None
    except InvalidService as exc:
        raise ApiError(400, str(exc)) from None
    if not await personalization.store.put(spec):
        response.status_code = 200
    else:
        response.status_code = 201
    for offer in spec.offers:
        await personalization.store.put_offer(name, offer)
    stored = await personalization.store.all()
    return described(stored.get(name, spec), "api")


@router.delete(PATH + "/{name}", status_code=204, summary="Delete a personalization service")
async def delete_service(
    name: Name,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    personalization = _admin(request, principal)
    _not_configured(personalization, name)
    if not await personalization.store.remove(name):
        raise ApiError(404, f"personalization service {name!r} not found")
    return Response(status_code=204)


@router.put(PATH + "/{name}/offers/{offer}", summary="Create or replace an offer")
async def put_offer(
    name: Name,
    offer: Name,
    body: dict[str, Any],
    request: Request,
    response: Response,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    personalization = _admin(request, principal)
    _not_configured(personalization, name)
    try:
        spec = OfferSpec.model_validate({**body, "name": offer})
        compile_offer(spec)
    except ValidationError as exc:
        raise ApiError(400, problems(exc)) from None
    except ExpressionError as exc:
        raise ApiError(400, f"offer {offer!r}: {exc}") from None
    added = await personalization.store.put_offer(name, spec)
    if added is None:
        raise ApiError(404, f"personalization service {name!r} not found")
    response.status_code = 201 if added else 200
    return spec.model_dump()


@router.delete(PATH + "/{name}/offers/{offer}", status_code=204, summary="Delete an offer")
async def delete_offer(
    name: Name,
    offer: Name,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    personalization = _admin(request, principal)
    _not_configured(personalization, name)
    if not await personalization.store.remove_offer(name, offer):
        raise ApiError(404, f"offer {offer!r} of {name!r} not found")
    return Response(status_code=204)


@router.post(PATH + "/{name}/tokens", status_code=201, summary="Make a token")
async def create_token(
    name: Name,
    body: NewToken,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> dict[str, Any]:
    """The answer's `token` is the whole `WP13n-Token` header value, shown only here."""
    personalization = _admin(request, principal)
    _not_configured(personalization, name)
    secret = secrets.token_urlsafe(32)
    token = TokenSpec(instance_id=body.instance_id, sha256=hash_token(secret))
    outcome = await personalization.store.add_token(name, token)
    spec = (await personalization.store.all()).get(name)  # read anew: adding cleared the cache
    if outcome == "no service" or spec is None:
        raise ApiError(404, f"personalization service {name!r} not found")
    if outcome == "exists":
        raise ApiError(409, f"instance {body.instance_id!r} has a token: delete it first")
    if outcome == "full":
        raise ApiError(409, f"service {name!r} has {MAX_TOKENS} tokens, the most it may have")
    return {
        "instance_id": body.instance_id,
        "token": f"{spec.account_id}/{body.instance_id}/{secret}",
    }


@router.delete(PATH + "/{name}/tokens/{instance_id}", status_code=204, summary="Revoke a token")
async def delete_token(
    name: Name,
    instance_id: str,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008 - FastAPI's dependency idiom
) -> Response:
    personalization = _admin(request, principal)
    _not_configured(personalization, name)
    if not await personalization.store.remove_token(name, instance_id):
        raise ApiError(404, f"token of instance {instance_id!r} of {name!r} not found")
    return Response(status_code=204)
