"""Personalization services and their offers (Treasure Data's Personalization API).

A personalization service is what a `WP13n-Token` routes to: an account, the
`database`/`table` its calls name, the entity whose profile it reads, how a call's
identifiers become an event's identities, its tokens (at most `MAX_TOKENS`, kept as
the SHA-256 of their secret, like API keys) and its offers. An offer is returned when
the customer meets its entry criteria: an audience (the view's `_audiences[name]` is
true; a missing one is false) or a CEL condition over the profile, which sees the
maps `attributes`, `traits` and `identities` of the stored view (a condition that
cannot be evaluated, e.g. on a missing attribute, is not met). An offer returns the
attributes it is configured with, each a CEL expression over the same maps
(`"'20% off'"` for a text, `traits.plan` for a profile value; null when it fails).

Everything here is pure: parsing and checking the specs, evaluating offers against a
decoded view, building the response and the event a call publishes. The loader of
the file and the routes are in `api.td_config`, `api.td` and `api.td_admin`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from attributes.errors import InputError
from attributes.expressions import (
    BOOL,
    DYN,
    STRING,
    EvaluationError,
    Expression,
    ExpressionError,
    compile_expression,
    map_of,
)

#: TD's limit: tokens one personalization service may have
MAX_TOKENS = 50
#: the content type TD's contract requires
CONTENT_TYPE = "application/vnd.treasuredata.v1+json"
#: the variables an offer's condition and attributes read: maps of the stored view
VARIABLES = {
    "attributes": map_of(STRING, DYN),
    "traits": map_of(STRING, DYN),
    "identities": map_of(STRING, DYN),
}
#: TD's identifiers and the event path each becomes (a service may change or add more)
DEFAULT_IDENTIFIERS = {
    "td_client_id": "anonymousId",
    "user_id": "userId",
    "email": "context.traits.email",
}
#: the event fields a call's attributes may not overwrite: the worker's envelope
ENVELOPE = frozenset(
    {"type", "event", "messageId", "timestamp", "originalTimestamp", "properties", "traits"}
)

NAME = r"^[A-Za-z0-9_.-]{1,64}$"
_PART = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class OfferSpec(pydantic.BaseModel):
    """One offer as written: its criteria (exactly one of `audience`, `condition`)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str = pydantic.Field(pattern=NAME)
    audience: str | None = None
    condition: str | None = None
    #: attribute name -> CEL expression of its value
    attributes: dict[str, str] = {}
    batch_segments: list[str] = []

    @pydantic.model_validator(mode="after")
    def _one_criterion(self) -> OfferSpec:
        if (self.audience is None) == (self.condition is None):
            raise ValueError("an offer needs exactly one of 'audience' or 'condition'")
        return self


class TokenSpec(pydantic.BaseModel):
    """A token's record: its instance id and the SHA-256 (hex) of its secret."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    instance_id: str = pydantic.Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")


class ServiceSpec(pydantic.BaseModel):
    """One personalization service as written in the file or sent to the admin API."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str = pydantic.Field(pattern=NAME)
    account_id: str = pydantic.Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    database: str = pydantic.Field(pattern=NAME)
    table: str = pydantic.Field(pattern=NAME)
    entity: str = "user"
    #: the ingest topic calls publish to; None: the first one
    topic: str | None = None
    #: the `track` event's name when a call sends no `event_name`
    event: str = "Personalization Request"
    #: a call's identifier field -> the event path it is sent as
    identifiers: dict[str, str] = DEFAULT_IDENTIFIERS
    #: networks calls may come from (CIDR); empty: any
    allowed_ips: list[str] = []
    #: read-your-write: how long a call waits for the worker to apply its event (0: not)
    wait_ms: int = pydantic.Field(default=1000, ge=0, le=10_000)
    tokens: list[TokenSpec] = pydantic.Field(default=[], max_length=MAX_TOKENS)
    offers: list[OfferSpec] = []

    @pydantic.field_validator("identifiers")
    @classmethod
    def _paths(cls, identifiers: dict[str, str]) -> dict[str, str]:
        if not identifiers:
            raise ValueError("at least one identifier is needed")
        for field, path in identifiers.items():
            if not _PATH.match(path) or path.split(".")[0] in ENVELOPE:
                raise ValueError(
                    f"identifier {field!r}: {path!r} is not an event path outside "
                    f"the envelope ({', '.join(sorted(ENVELOPE))})"
                )
        return identifiers

    @pydantic.field_validator("allowed_ips")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an IP network (CIDR)") from None
        return networks


class InvalidService(InputError):
    """A service whose offers do not compile, or that names what is not configured;
    `problems` are (offer index or None, what is wrong)."""

    def __init__(self, problems: list[tuple[int | None, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


@dataclass(frozen=True, slots=True)
class Offer:
    name: str
    audience: str | None
    condition: Expression | None
    attributes: tuple[tuple[str, Expression], ...]
    batch_segments: tuple[str, ...]

    def met_by(self, view: Mapping[str, Any], variables: Mapping[str, Any]) -> bool:
        """Whether the profile of `view` (decoded) meets the entry criteria."""
        if self.audience is not None:
            audiences = view.get("_audiences")
            return isinstance(audiences, dict) and audiences.get(self.audience) is True
        assert self.condition is not None
        try:
            return self.condition.evaluate(variables) is True
        except EvaluationError:
            return False

    def payload(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, expression in self.attributes:
            try:
                values[name] = expression.evaluate(variables)
            except EvaluationError:
                values[name] = None
        return {
            "attributes": values,
            "batch_segments": [{"id": segment} for segment in self.batch_segments],
        }


@dataclass(frozen=True, slots=True)
class Service:
    spec: ServiceSpec
    offers: tuple[Offer, ...]
    #: token secret's SHA-256 -> its instance id
    tokens: Mapping[str, str]

    @property
    def name(self) -> str:
        return self.spec.name


def compile_offer(spec: OfferSpec) -> Offer:
    """Raises ExpressionError naming the offer's condition or attribute that fails."""
    condition = None
    if spec.condition is not None:
        try:
            condition = compile_expression(spec.condition, VARIABLES, expect=BOOL)
        except ExpressionError as exc:
            raise ExpressionError(f"condition: {exc}") from None
    attributes = []
    for name, source in spec.attributes.items():
        try:
            attributes.append((name, compile_expression(source, VARIABLES)))
        except ExpressionError as exc:
            raise ExpressionError(f"attribute {name!r}: {exc}") from None
    return Offer(spec.name, spec.audience, condition, tuple(attributes), tuple(spec.batch_segments))


def compile_service(spec: ServiceSpec, entities: Sequence[str], topics: Sequence[str]) -> Service:
    """The service, checked against the configured entities and ingest topics;
    raises InvalidService listing every problem."""
    problems: list[tuple[int | None, str]] = []
    if spec.entity not in entities:
        problems.append((None, f"entity {spec.entity!r} is not declared ({', '.join(entities)})"))
    if spec.topic is not None and spec.topic not in topics:
        problems.append(
            (None, f"topic {spec.topic!r} is not an ingest topic ({', '.join(topics)})")
        )
    tokens: dict[str, str] = {}
    for token in spec.tokens:
        if token.sha256 in tokens:
            problems.append((None, f"token of instance {token.instance_id!r} is listed twice"))
        tokens[token.sha256] = token.instance_id
    offers: list[Offer] = []
    seen: set[str] = set()
    for index, offer in enumerate(spec.offers):
        if offer.name in seen:
            problems.append((index, f"offer {offer.name!r}: duplicate name"))
        seen.add(offer.name)
        try:
            offers.append(compile_offer(offer))
        except ExpressionError as exc:
            problems.append((index, f"offer {offer.name!r}: {exc}"))
    if problems:
        raise InvalidService(problems)
    return Service(spec, tuple(offers), tokens)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RtToken:
    """A `WP13n-Token` header's parts: `{account_id}/{instance_id}/{token}`."""

    account_id: str
    instance_id: str
    secret: str


def parse_rt_token(header: str) -> RtToken | None:
    """The parts of a token, or None when it is not three non-empty parts (3003)."""
    parts = header.strip().split("/")
    if len(parts) != 3 or not all(_PART.fullmatch(part) for part in parts):
        return None
    return RtToken(*parts)


def parse_td1(header: str) -> tuple[str, str] | None:
    """(account id, API key) of `Authorization: TD1 {account_id}/{apikey}`, else None."""
    scheme, _, credentials = header.strip().partition(" ")
    account, slash, key = credentials.strip().partition("/")
    if scheme.upper() != "TD1" or not slash or not _PART.fullmatch(account) or not key:
        return None
    return account, key


def view_variables(view: Mapping[str, Any]) -> dict[str, Any]:
    """The CEL variables of a decoded view: its maps, empty when absent."""
    return {
        name: value if isinstance(value := view.get(name), dict) else {}
        for name in ("attributes", "traits", "identities")
    }


def offers_for(service: Service, view: Mapping[str, Any] | None) -> dict[str, Any]:
    """TD's answer: every offer whose criteria the profile meets (none without one)."""
    offers: dict[str, Any] = {}
    if view is not None:
        variables = view_variables(view)
        for offer in service.offers:
            if offer.met_by(view, variables):
                offers[offer.name] = offer.payload(variables)
    return {"offers": offers}


class InvalidEventObject(InputError):
    """A call's body that is no event (TD's 3004); the message says why."""


def _usable_id(field: str, value: Any, max_length: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEventObject(f"identifier {field!r} should be a string")
    text = str(value).strip()
    if len(text) > max_length:
        raise InvalidEventObject(f"identifier {field!r} should be at most {max_length} characters")
    return text or None


def _put(event: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    target = event
    for part in parents:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[leaf] = value


@dataclass(frozen=True, slots=True)
class CallEvent:
    """What a call publishes: the event, its partition key, and its `messageId`."""

    event: dict[str, Any]
    key: str
    message_id: str


def call_event(
    service: Service, body: Any, *, message_id: str, timestamp: str, max_id_length: int
) -> CallEvent:
    """The `track` event a call's body becomes: its identifiers where the service's
    `identifiers` put them, `event_name` (or the service's event) as its name, every
    other field (and the fields of an `attributes` object) as its properties. Keyed
    by the first identifier present, in the service's order. Raises
    InvalidEventObject: not an object, no identifier, a bad one."""
    if not isinstance(body, dict):
        raise InvalidEventObject("the body should be a JSON object")
    spec = service.spec
    found = [
        (field, value)
        for field in spec.identifiers
        if (value := _usable_id(field, body.get(field), max_id_length)) is not None
    ]
    if not found:
        raise InvalidEventObject(
            f"the body needs at least one identifier: {', '.join(spec.identifiers)}"
        )
    name = body.get("event_name", spec.event)
    if not isinstance(name, str) or not name.strip():
        raise InvalidEventObject("event_name should be a non-empty string")
    properties = {
        key: value
        for key, value in body.items()
        if key not in spec.identifiers and key not in ("event_name", "attributes")
    }
    extra = body.get("attributes")
    if extra is not None and not isinstance(extra, dict):
        raise InvalidEventObject("attributes should be a JSON object")
    properties.update(extra or {})
    event: dict[str, Any] = {
        "type": "track",
        "event": name,
        "messageId": message_id,
        "timestamp": timestamp,
        "properties": properties,
        "context": {
            "personalization": {
                "service": spec.name,
                "database": spec.database,
                "table": spec.table,
            }
        },
    }
    for field, value in found:
        _put(event, spec.identifiers[field], value)
    key = event.get("userId") or event.get("anonymousId") or found[0][1]  # as topics do
    return CallEvent(event, str(key), message_id)


def allowed(service: Service, address: str | None) -> bool:
    """Whether a call from `address` may use the service (3005 otherwise)."""
    networks = service.spec.allowed_ips
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(network, strict=False) for network in networks)
