"""Settings of what profiles are: entities and their identities, sources and what
each may do, collections and destinations that serve them, merge policies
(`Settings` is made of this and the other groups: `traitflow.config`).

Why a group of its own: these settings refer to one another (a collection serves an
entity, a policy ranks sources, a destination serves a collection's entity), and their
validators check those references together, naming the setting that is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from attributes.identities import DEFAULT_ACCOUNT, DEFAULT_USER, EntitySpec
from attributes.policies import DEFAULT_POLICIES, MergePolicy
from attributes.profile import Retraction
from attributes.records import RecordMapping, field_problem
from attributes.stitching import SourceTrust, Trust

#: an entity's name is part of Redis keys and metric labels
_ENTITY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class Destination(BaseModel):
    """A named view served by the activation API: an entity, the attributes (or
    audiences) it exposes and the identify traits it serves as columns too, by name
    (`*`: every trait of the profile), as RudderStack serves every column of its
    customer-360 table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entity: str = Field(min_length=1)
    attributes: list[str] = []
    traits: list[str] = []

    @model_serializer(mode="wrap")
    def _without_unused_traits(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A destination that serves no trait is written as before traits existed."""
        data = handler(self)
        if not self.traits and isinstance(data, dict):
            data.pop("traits", None)
        return data


#: the embedded destination: the example rules' attributes a web page personalises with
DEFAULT_DESTINATIONS = {
    "web-personalisation": Destination(
        entity="user",
        attributes=[
            "lifetime_value",
            "purchase_count",
            "last_product",
            "recently_viewed",
            "favourite_category",
            "loyal",
        ],
    )
}


def _split_collections(data: Any) -> Any:
    """Collections declared `{"entity", "fields"}`: their entity into `collections`,
    their fields into `collection_fields`."""
    if not isinstance(data, dict) or not isinstance(data.get("collections"), dict):
        return data
    collections: dict[Any, Any] = {}
    fields = dict(data.get("collection_fields") or {})
    for name, served in data["collections"].items():
        if not isinstance(served, Mapping):
            collections[name] = served
            continue
        unknown = sorted(set(served) - {"entity", "fields"})
        entity, mapped = served.get("entity"), served.get("fields", {})
        if unknown or not isinstance(entity, str) or not isinstance(mapped, Mapping):
            raise ValueError(
                f"collections: {name!r} should be an entity name or "
                '{"entity": name, "fields": {field: path}}'
                + (f" (unknown keys: {', '.join(map(str, unknown))})" if unknown else "")
            )
        for field, path in mapped.items():
            if not isinstance(field, str) or not isinstance(path, str):
                raise ValueError(f"collections: {name!r}: field {field!r} should map a path")
        if name in fields:
            raise ValueError(
                f"collections: {name!r} declares fields both here and in collection_fields"
            )
        collections[name] = entity
        if mapped:  # `{"entity": e}` alone is the plain form
            fields[name] = dict(mapped)
    return data | {"collections": collections, "collection_fields": fields}


class ProfileSettings(BaseModel):
    #: ingest topic -> source name (merge policies rank sources)
    sources: dict[str, str] = {"traitflow-events": "default"}
    #: HTTP ingest (`api.ingest`): a write key's SHA-256 (hex) -> the source its events
    #: come from, published to the one ingest topic bound to that source
    write_keys: dict[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")], str] = {}
    #: source -> what its `delete` events remove: "fields" (the traits it provided; the
    #: default) or "record" (the whole profile: reads answer 404)
    source_deletes: dict[str, Retraction] = {}
    #: source -> what its events may link in identity stitching: "trusted" (anything),
    #: "authenticated" (anonymous ids to the profile its userId names) or "untrusted"
    #: (nothing: the default for a source not listed); `attributes.stitching`
    source_trust: dict[str, Trust] = {}
    #: entity -> its identity types (priority order), limits, stitching and where its
    #: traits come from (`attributes.identities`); the worker builds a profile of each
    #: entity whose identities an event carries, in this order
    entities: dict[str, EntitySpec] = {"user": DEFAULT_USER, "account": DEFAULT_ACCOUNT}
    #: collection name (in API paths) -> entity; unset: each entity `e` as collection `es`.
    #: A collection may be declared `{"entity": e, "fields": {name: path}}` instead: its
    #: records are those fields of the view, under those names (`attributes.records`);
    #: its entity is kept here and its fields in `collection_fields`
    collections: dict[str, str] = {"users": "user", "accounts": "account"}
    #: collection -> its field mapping (name -> dotted path into the view), for those
    #: declared with `fields`
    collection_fields: dict[str, dict[str, str]] = {}
    #: activation destination id -> the entity and attributes it serves
    destinations: dict[str, Destination] = DEFAULT_DESTINATIONS
    #: merge policy id -> how it picks a field among sources (`attributes.policies`)
    merge_policies: dict[str, MergePolicy] = DEFAULT_POLICIES
    #: the policy whose merge the worker materialises (and reads get by default)
    default_merge_policy: str = "default"
    anonymous_types: list[str] = ["anonymous_id"]

    @model_validator(mode="after")
    def _source_names_fit_keys(self) -> Self:
        for topic, source in self.sources.items():
            if not source or ":" in source:
                raise ValueError(
                    f"sources: topic {topic!r} is bound to {source!r}; a source name must be "
                    "non-empty and have no ':' (it is part of Redis keys)"
                )
        for digest, source in self.write_keys.items():
            if list(self.sources.values()).count(source) != 1:
                raise ValueError(
                    f"write_keys: the key {digest[:12]}... names source {source!r}, which must "
                    f"be bound to exactly one ingest topic (sources: {self.sources})"
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow_entities(cls, data: Any) -> Any:
        """Without collections set, each declared entity is served as its plural; the
        default destinations are kept for the entities that are served."""
        data = _split_collections(data)
        if not isinstance(data, dict) or not isinstance(data.get("entities"), dict):
            return data
        if "collections" not in data:
            data = data | {"collections": {f"{entity}s": entity for entity in data["entities"]}}
        if "destinations" not in data and isinstance(data["collections"], dict):
            served = set(data["collections"].values())
            data = data | {
                "destinations": {
                    name: destination
                    for name, destination in DEFAULT_DESTINATIONS.items()
                    if destination.entity in served
                }
            }
        return data

    @model_validator(mode="after")
    def _entities_are_named_and_served(self) -> Self:
        if not self.entities:
            raise ValueError("entities: declare at least one (e.g. 'user')")
        for entity in self.entities:
            if not _ENTITY_NAME.match(entity):
                raise ValueError(
                    f"entities: {entity!r} must be lower-case letters, digits and _ "
                    "(at most 32), starting with a letter"
                )
        for name, entity in self.collections.items():
            if entity not in self.entities:
                raise ValueError(
                    f"collections: {name!r} serves entity {entity!r}, which is not declared "
                    f"(entities: {', '.join(self.entities)})"
                )
        return self

    @model_validator(mode="after")
    def _collection_fields_are_mappings(self) -> Self:
        for collection, fields in self.collection_fields.items():
            if collection not in self.collections:
                raise ValueError(
                    f"collection_fields: {collection!r} is not a collection "
                    f"(collections: {', '.join(self.collections) or 'none'})"
                )
            if ":" in collection:
                raise ValueError(
                    f"collections: {collection!r} has fields, so its name must have no ':' "
                    "(it is part of Redis keys)"
                )
            if not fields:
                raise ValueError(f"collections: {collection!r} declares no fields")
            named: dict[str, str] = {}
            for name, path in fields.items():
                if problem := field_problem(name, path):
                    raise ValueError(f"collections: {collection!r}: {problem}")
                if path in named:
                    raise ValueError(
                        f"collections: {collection!r}: field {name!r} maps {path!r}, "
                        f"which field {named[path]!r} maps already"
                    )
                named[path] = name
        return self

    @cached_property
    def record_mappings(self) -> dict[str, dict[str, RecordMapping]]:
        """Entity -> its collections that declare fields -> their mapping."""
        mappings: dict[str, dict[str, RecordMapping]] = {}
        for collection, fields in self.collection_fields.items():
            entity = self.collections[collection]
            mappings.setdefault(entity, {})[collection] = RecordMapping.of(fields)
        return mappings

    @model_validator(mode="after")
    def _policies_are_consistent(self) -> Self:
        if self.default_merge_policy not in self.merge_policies:
            raise ValueError(
                f"default_merge_policy {self.default_merge_policy!r} is not one of the "
                f"merge_policies ({', '.join(sorted(self.merge_policies)) or 'none'})"
            )
        bound = set(self.sources.values())
        for setting, named in (
            ("source_deletes", self.source_deletes),
            ("source_trust", self.source_trust),
        ):
            for source in named:
                if source not in bound:
                    raise ValueError(
                        f"{setting}: no ingest topic is bound to source {source!r} "
                        f"(sources: {', '.join(sorted(bound)) or 'none'})"
                    )
        for name, policy in self.merge_policies.items():
            for source in policy.sources:
                if source not in bound:
                    raise ValueError(
                        f"merge_policies: {name!r} lists source {source!r}, which no ingest "
                        f"topic is bound to (sources: {', '.join(sorted(bound)) or 'none'})"
                    )
        return self

    @property
    def trust(self) -> SourceTrust:
        """What each source's events may link; a source not named: nothing."""
        return SourceTrust(dict(self.source_trust))

    @property
    def default_policy(self) -> MergePolicy:
        return self.merge_policies[self.default_merge_policy]

    @model_validator(mode="after")
    def _destinations_serve_known_entities(self) -> Self:
        served = set(self.collections.values())
        for name, destination in self.destinations.items():
            if not name.strip():
                raise ValueError("destinations: a destination id must not be blank")
            if destination.entity not in served:
                raise ValueError(
                    f"destinations: {name!r} serves entity {destination.entity!r}, which no "
                    f"collection serves (collections serve: {', '.join(sorted(served)) or 'none'})"
                )
        return self
