"""Settings for every entry point, from environment variables with embedded defaults.

Every setting `x` can be overridden with `TRAITFLOW_X` (e.g. `TRAITFLOW_KAFKA_BOOTSTRAP`,
`TRAITFLOW_REDIS_URL`). The defaults point at the embedded broker and Redis that
`traitflow services up` starts on ports of their own, so a demo never touches a Kafka
or Redis that already runs on the machine.

The environment is read in one place: `Settings.from_environ(environ)`, called once by
each entry point (the CLI's callback, the API's uvicorn factory) with the environment
it was started with. `Settings(...)` itself reads none, so a component given settings
cannot pick up a variable its caller did not (as Starlette's `Config(environ=...)`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from attributes.identities import DEFAULT_ACCOUNT, DEFAULT_USER, EntitySpec
from attributes.limits import EventLimits
from attributes.policies import DEFAULT_POLICIES, MergePolicy
from attributes.profile import Retraction
from attributes.records import RecordMapping, field_problem
from attributes.stitching import SourceTrust, Trust
from traitflow import environ_source, kafka_client

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:19092"
#: an entity's name is part of Redis keys and metric labels
_ENTITY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
DEFAULT_REDIS_URL = "redis://127.0.0.1:16379/0"


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


class Settings(BaseSettings):
    # an error names the setting, never its value: some are secrets
    model_config = SettingsConfigDict(
        env_prefix="TRAITFLOW_", frozen=True, hide_input_in_errors=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Never the process's own environment: only one `from_environ` is given."""
        return environ_source.sources(settings_cls, init_settings)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **values: Any) -> Settings:
        """Settings from `environ`'s `TRAITFLOW_*` variables, `values` overriding them:
        what an entry point builds, once, from the environment it was started with.
        Whether the broker and Redis are the user's own (`kafka_is_external`,
        `redis_is_external`: timeouts and which services to start follow) is whether
        `environ` names them."""
        with environ_source.reading(environ):
            settings = cls(**values)
        settings._kafka_from_env = "TRAITFLOW_KAFKA_BOOTSTRAP" in environ
        settings._redis_from_env = "TRAITFLOW_REDIS_URL" in environ
        if not settings._redis_from_env and "redis_url" not in values:
            settings = settings._with_embedded_password()
        return settings

    def _with_embedded_password(self) -> Settings:
        """These settings with the embedded Redis's password in `redis_url`: the one
        in `TRAITFLOW_REDIS_PASSWORD`, else the one generated once into the home
        (`traitflow.redis_password`). In the URL, so that every client made from it,
        a test's or a benchmark's too, authenticates; what prints a Redis address
        prints host and port only."""
        from traitflow.redis_password import embedded_password, url_with_password

        if self.redis_password is not None or urlsplit(self.redis_url).password is not None:
            return self
        password = embedded_password(self.home)
        copy = self.model_copy(update={"redis_url": url_with_password(self.redis_url, password)})
        copy._kafka_from_env, copy._redis_from_env = self._kafka_from_env, self._redis_from_env
        return copy

    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    redis_url: str = DEFAULT_REDIS_URL
    #: an ACL user and its password for Redis, over the URL's (redis://user:pw@host);
    #: unset: the URL's, or none. The password is never logged (README, "Secured Redis")
    redis_username: str | None = Field(default=None, min_length=1)
    redis_password: SecretStr | None = None
    #: TLS, with a rediss:// URL: the CA that signed Redis's certificate (unset: the
    #: system's CAs), a client certificate and its key when Redis asks for one, and
    #: whether the certificate must name the URL's host
    redis_ssl_ca_file: Path | None = None
    redis_ssl_cert_file: Path | None = None
    redis_ssl_key_file: Path | None = None
    redis_ssl_check_hostname: bool = True
    #: a tagged prefix ({tf}) is what `redis_cluster` makes of a plain one
    key_prefix: str = Field(
        default="tf", pattern=r"^(\{[A-Za-z0-9_.-]{1,64}\}|[A-Za-z0-9_.-]{1,64})$"
    )
    #: Redis Cluster (README, "Redis Cluster"): the prefix becomes a hash tag, so every
    #: key is in one slot, and every connection goes to the node serving it
    redis_cluster: bool = False

    app_id: str = "traitflow"
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
    dead_letter_topic: str = "traitflow-dead-letters"
    #: where every audience enter and exit is announced (`streams.announcements`)
    audience_changes_topic: str = "traitflow-audience-changes"
    #: where every profile write is announced (a compacted topic); None: not announced
    profile_changes_topic: str | None = None
    #: how often the worker sends what committed writes left in its outboxes
    outbox_interval_s: float = Field(default=0.1, gt=0)
    #: seconds between a worker's checks of the rules version (`streams.rule_switch`):
    #: how soon an idle worker switches to attributes changed through the API (a busy
    #: one switches at its next commit)
    rules_poll_s: float = Field(default=1.0, gt=0)
    #: whether an attribute made ACTIVE through the API is first computed over the
    #: history retained in the ingest topics (PROCESSING until joined: `streams.
    #: backfill`), and how many of those events it reads per second at most
    backfill: bool = True
    backfill_rate_per_s: float = Field(default=20_000.0, gt=0)
    #: tries to produce a dead letter, and the seconds they may take in all, before it is
    #: parked in Redis (`streams.dead_letters`) and the batch goes on
    dead_letter_attempts: int = Field(default=3, ge=1)
    dead_letter_timeout_s: float = Field(default=5.0, gt=0)
    topic_partitions: int = Field(default=8, ge=1)
    #: replication factor and min.insync.replicas of the topics traitflow creates
    #: (`traitflow.topics.new_topics`); unset: the broker's defaults
    topic_replication_factor: int | None = Field(default=None, ge=1)
    topic_min_insync_replicas: int | None = Field(default=None, ge=1)
    #: how every Kafka client connects (`traitflow.kafka_client`; README, "Secured
    #: Kafka"): TLS with SSL and SASL_SSL (the broker's certificate checked against the
    #: CA file, else the system's CAs; a client certificate and key when the broker asks
    #: for one), SASL with SASL_PLAINTEXT and SASL_SSL. The password is never logged
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = Field(default=None, min_length=1)
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_file: Path | None = None
    kafka_ssl_cert_file: Path | None = None
    kafka_ssl_key_file: Path | None = None
    kafka_ssl_check_hostname: bool = True

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Settings:
        if problem := kafka_client.security_problem(self):
            raise ValueError(problem)
        return self

    rules_path: Path = Path("examples/rules.yaml")
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
    #: lookups per batch request, and characters per identity value, at most (the
    #: worker dead-letters an event with a longer identity value or messageId)
    max_batch_lookups: int = Field(default=100, ge=1)
    max_id_length: int = Field(default=512, ge=1)
    #: what one event may be (`attributes.limits`); an event over a limit is a dead
    #: letter whose reason names the limit
    max_event_bytes: int = Field(default=256 * 1024, ge=64)
    max_event_depth: int = Field(default=32, ge=2)
    max_identities_per_event: int = Field(default=32, ge=1)
    #: how far in the future an event's time may be, in seconds (0: no limit)
    max_future_skew_s: float = Field(default=86_400.0, ge=0)
    #: how long an applied (source, messageId) is remembered, so that a producer's
    #: retry counts once (0: no deduplication by messageId; offsets still guard)
    dedupe_window_s: float = Field(default=7 * 86_400.0, ge=0)
    #: profile states a source delete job reads per second, and per round (a SCAN's
    #: COUNT, one MGET): its load on Redis (`traitflow.source_jobs`)
    source_job_rate_per_s: float = Field(default=2000.0, gt=0)
    source_job_batch: int = Field(default=200, ge=1, le=10_000)
    #: whether API processes run source delete jobs: those made through the API, and
    #: any whose runner died (its lease ran out)
    source_jobs_in_api: bool = True
    #: how long a profile known only by anonymous ids (`anonymous_types`) lives without
    #: an event (or a window moving) before Redis drops it (0: for good)
    anonymous_ttl_s: float = Field(default=0.0, ge=0)
    #: what the worker waits for after a batch's writes, before its offsets are
    #: committed: "none" (Redis's own persistence: the embedded one writes its AOF
    #: before replying), "disk" (fsynced: WAITAOF on Redis 7.2+, `appendfsync always`
    #: on older ones) or "replicas:N" (WAIT); see traitflow.durability
    redis_sync: str = Field(default="none", pattern=r"^(none|disk|replicas:[1-9][0-9]?)$")
    redis_sync_timeout_s: float = Field(default=5.0, gt=0)
    #: where the embedded broker keeps topics, offsets and groups: "memory" (lost when
    #: it stops) or "disk" (`TRAITFLOW_HOME/broker/data`, through traitflow.objectstore)
    broker_storage: Literal["memory", "disk"] = "disk"
    anonymous_types: list[str] = ["anonymous_id"]

    @property
    def event_limits(self) -> EventLimits:
        skew = self.max_future_skew_s
        return EventLimits(
            max_bytes=self.max_event_bytes,
            max_depth=self.max_event_depth,
            max_id_length=self.max_id_length,
            max_identities=self.max_identities_per_event,
            max_future_skew_ms=int(skew * 1000) if skew else None,
        )

    @model_validator(mode="after")
    def _source_names_fit_keys(self) -> Settings:
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

    @model_validator(mode="after")
    def _cluster_prefix_is_a_hash_tag(self) -> Settings:
        """On a Redis Cluster every key must share one slot (`traitflow.redis_cluster`):
        the prefix becomes `{prefix}`; a tag off a cluster is a mistake, refused."""
        tagged = self.key_prefix.startswith("{")
        if self.redis_cluster and urlsplit(self.redis_url).scheme != "redis":
            raise ValueError(
                "TRAITFLOW_REDIS_CLUSTER=true takes a redis://host:port URL of a node "
                "(no TLS or unix socket in cluster mode yet)"
            )
        if self.redis_cluster and not tagged:
            object.__setattr__(self, "key_prefix", "{" + self.key_prefix + "}")
        elif tagged and not self.redis_cluster:
            raise ValueError(
                f"key_prefix {self.key_prefix!r}: braces (a hash tag) only with "
                "TRAITFLOW_REDIS_CLUSTER=true"
            )
        return self

    @model_validator(mode="after")
    def _redis_tls_is_consistent(self) -> Settings:
        """TLS files that would be ignored, or that are missing, stop the start here,
        naming the setting, rather than as a handshake failure later."""
        files = {
            "TRAITFLOW_REDIS_SSL_CA_FILE": self.redis_ssl_ca_file,
            "TRAITFLOW_REDIS_SSL_CERT_FILE": self.redis_ssl_cert_file,
            "TRAITFLOW_REDIS_SSL_KEY_FILE": self.redis_ssl_key_file,
        }
        named = [name for name, path in files.items() if path is not None]
        if named and urlsplit(self.redis_url).scheme != "rediss":
            raise ValueError(
                f"{', '.join(named)} set, but TRAITFLOW_REDIS_URL is not a rediss:// URL "
                "(TLS is on with rediss:// only)"
            )
        if self.redis_ssl_key_file is not None and self.redis_ssl_cert_file is None:
            raise ValueError(
                "TRAITFLOW_REDIS_SSL_KEY_FILE set without TRAITFLOW_REDIS_SSL_CERT_FILE "
                "(the client certificate the key belongs to)"
            )
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
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
    def _entities_are_named_and_served(self) -> Settings:
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
    def _collection_fields_are_mappings(self) -> Settings:
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
    def _policies_are_consistent(self) -> Settings:
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
    def _destinations_serve_known_entities(self) -> Settings:
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

    batch_size: int = Field(default=2000, ge=1)
    #: how long the broker may hold a fetch that finds no new records (ms); unset =
    #: `fetch_wait` picks it
    fetch_wait_ms: int | None = Field(default=None, ge=1, le=60_000)
    #: decoded profile states the worker keeps for the partitions it owns (0 = none)
    state_cache_profiles: int = Field(default=100_000, ge=0)
    #: how often the worker re-renders profiles whose lookback windows have moved
    expiry_interval_s: float = Field(default=1.0, gt=0)
    #: how stale a value read from `now` (derived attributes, audience conditions) may
    #: get: such a profile is rendered again this long after each write at the latest
    #: (`attributes.clock`)
    time_refresh_s: float = Field(default=3600.0, gt=0)
    #: consumer-group timeouts; unset = `group_timeouts` picks them
    session_timeout_s: float | None = Field(default=None, gt=0)
    rebalance_timeout_s: float | None = Field(default=None, gt=0)
    heartbeat_interval_s: float | None = Field(default=None, gt=0)

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    #: per-key request rate (token bucket refill, requests/s) and burst, for keys
    #: created without their own `--rate` / `--burst`
    api_rate_per_s: float = Field(default=100.0, gt=0)
    api_burst: int = Field(default=200, ge=1)
    #: how long an API process trusts an API key record it read: a revoke takes effect
    #: within this many seconds (0 = read the record on every request)
    api_key_cache_s: float = Field(default=2.0, ge=0)
    #: how long an API process remembers that a key id is unknown (never made, or
    #: revoked) and answers it 401 without asking Redis; a key made after its id was
    #: remembered works that many seconds later at most (0 = ask Redis every time)
    api_negative_key_ttl_s: float = Field(default=5.0, ge=0)
    #: failed authentications per client address: token bucket refill (per second) and
    #: burst, per API process; past them an address gets 429s that cost Redis nothing
    api_auth_failures_per_s: float = Field(default=1.0, gt=0)
    api_auth_failures_burst: int = Field(default=20, ge=1)
    #: proxies in front of the API that append to X-Forwarded-For: the client address
    #: is the entry the outermost of them wrote (0 = the header is ignored)
    api_trusted_proxies: int = Field(default=0, ge=0)
    #: how long an API process trusts the merge policies made through the API that it
    #: read: a new or changed one reaches every process within this many seconds
    api_policy_cache_s: float = Field(default=2.0, ge=0)
    #: largest request body the API accepts (a bigger one is a 413 before it is read)
    api_max_body_bytes: int = Field(default=65_536, ge=0)
    #: how long an HTTP ingest call waits for the broker to acknowledge its events (503 after)
    ingest_timeout_s: float = Field(default=5.0, gt=0)
    #: per write key: HTTP ingest calls/s (token bucket refill) and burst (default twice
    #: the rate), the bucket shared by every API process in Redis; unset: no limit, and
    #: ingest makes no Redis round trip
    write_key_rate_per_s: float | None = Field(default=None, gt=0)
    write_key_burst: int | None = Field(default=None, ge=1)
    #: Treasure Data personalization services, tokens and offers (`api.td_config`)
    personalization_file: Path | None = None
    #: how long `/readyz` waits for Redis to answer a PING
    api_ready_timeout_s: float = Field(default=0.5, gt=0)
    #: where the worker serves Prometheus metrics (on `api_host`); unset = not served.
    #: With several worker processes, process i serves on this port + i
    worker_metrics_port: int | None = None
    #: worker processes `traitflow worker` runs (one consumer group); 0 = one per core
    worker_processes: int = Field(default=0, ge=0)
    #: where embedded services keep pid files, logs and data
    home: Path = Path(".traitflow")
    #: where export jobs write their files (a job names a file in it); unset: HOME/exports
    export_dir: Path | None = None
    #: profiles an export job reads per second, and per round (one MGET; each SCAN's
    #: COUNT), unless the job says otherwise: its load on Redis
    export_rate_per_s: float = Field(default=5000.0, gt=0)
    export_batch: int = Field(default=500, ge=1, le=10_000)
    #: how long an export job's runner holds it without saving progress; once it is
    #: over (the runner died), another runner takes the job over
    export_lease_s: float = Field(default=15.0, gt=0)
    #: whether API processes run export jobs: those made through the API, and any
    #: whose runner died
    export_in_api: bool = True

    @property
    def exports_path(self) -> Path:
        return self.export_dir if self.export_dir is not None else self.home / "exports"

    @property
    def fetch_wait(self) -> int:
        """Milliseconds the broker may hold the worker's fetch while it has no records.

        Kafka answers a waiting fetch as soon as records arrive, so on an external
        broker the wait only bounds idle polling (500 ms, the consumer default). The
        embedded Tansu answers only when the wait is over, so there it is what an event
        that arrives while the worker waits is delayed by: a few milliseconds, against
        the idle polling that a shorter wait costs (figures: bench/README.md, issue 13).
        Faust's hard-coded 1500 ms made events visible most of a second late. An
        external Tansu wants `TRAITFLOW_FETCH_WAIT_MS`.
        """
        if self.fetch_wait_ms is not None:
            return self.fetch_wait_ms
        return 500 if self.kafka_is_external else 5

    @property
    def group_timeouts(self) -> tuple[float, float, float]:
        """(session, rebalance, heartbeat) seconds for the consumer group.

        The embedded Tansu broker holds a new group's join for half the session
        timeout, so there they are short (a worker joins its group quickly). Apache Kafka
        refuses sessions under 6 s by default (group.min.session.timeout.ms), so an
        external broker gets Kafka-safe values unless they are set explicitly.
        """
        session, rebalance, heartbeat = (
            (10.0, 5.0, 3.0) if self.kafka_is_external else (2.0, 1.0, 0.5)
        )
        return (
            self.session_timeout_s or session,
            self.rebalance_timeout_s or rebalance,
            self.heartbeat_interval_s or heartbeat,
        )

    def isolated(self, name: str, **changes: Any) -> Settings:
        """A copy whose topics, consumer group and Redis keys are all named after `name`,
        so that a test or benchmark run shares no state with any other; `changes`
        override further settings. A port cannot be shared: the copy serves no worker
        metrics unless `changes` give it a port of its own. Each ingest topic `t` becomes
        `name-t`, bound to the same source. The copy is validated like any settings; with
        new `entities`, collections and destinations that were defaults follow them."""
        names: dict[str, Any] = {
            "app_id": name,
            "key_prefix": name,
            "sources": {f"{name}-{topic}": source for topic, source in self.sources.items()},
            "dead_letter_topic": f"{name}-dead-letters",
            "audience_changes_topic": f"{name}-audience-changes",
            "worker_metrics_port": None,
        }
        if self.profile_changes_topic is not None:
            names["profile_changes_topic"] = f"{name}-profile-changes"
        current = self.model_dump()
        if "entities" in changes:  # what follows the entities follows the new ones
            for follower in ("collections", "destinations"):
                if follower not in changes and follower not in self.model_fields_set:
                    del current[follower]
        if "collections" in changes or "collections" not in current:
            current.pop("collection_fields")  # the mappings are those of the collections
        copy = type(self).model_validate(current | names | changes)
        copy._kafka_from_env, copy._redis_from_env = self._kafka_from_env, self._redis_from_env
        return copy

    def as_env(self) -> dict[str, str]:
        """`TRAITFLOW_*` variables that make a child process use exactly these settings.

        The group timeouts and the fetch wait are written resolved: the child is given
        the broker as an explicit address, which alone would make it pick an external
        broker's."""
        session, rebalance, heartbeat = self.group_timeouts
        values = self.model_dump(mode="json") | {
            "session_timeout_s": session,
            "rebalance_timeout_s": rebalance,
            "heartbeat_interval_s": heartbeat,
            "fetch_wait_ms": self.fetch_wait,
        }
        if self.redis_password is not None:  # dumped masked: the child needs the password
            values["redis_password"] = self.redis_password.get_secret_value()
        if self.kafka_sasl_password is not None:  # dumped masked: the child needs it
            values["kafka_sasl_password"] = self.kafka_sasl_password.get_secret_value()
        return {
            f"TRAITFLOW_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
            for name, value in values.items()
            if value is not None
        }

    def child_env(self) -> dict[str, str]:
        """This process's environment, with these settings instead of any `TRAITFLOW_*`
        variable: what a worker or API started from a test or benchmark runs with."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("TRAITFLOW_")}
        return inherited | self.as_env()

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        first = self.kafka_bootstrap.split(",")[0].removeprefix("kafka://")
        host, colon, port = first.rpartition(":")
        if not colon:  # no port given: Kafka's default
            return port or "127.0.0.1", 9092
        return host or "127.0.0.1", int(port)

    @property
    def redis_host_port(self) -> tuple[str, int]:
        url = urlsplit(self.redis_url)
        return url.hostname or "127.0.0.1", url.port or 6379

    #: whether the environment named the broker / Redis when these settings were made
    #: (`from_environ`; settings made from values alone name the embedded ones)
    _kafka_from_env: bool = PrivateAttr(default=False)
    _redis_from_env: bool = PrivateAttr(default=False)

    @property
    def kafka_is_external(self) -> bool:
        """True when the user pointed us at their own broker (we start none)."""
        return self._kafka_from_env

    @property
    def redis_is_external(self) -> bool:
        return self._redis_from_env
