"""Settings for every entry point, from environment variables with embedded defaults.

Every setting `x` can be overridden with `TRAITFLOW_X` (e.g. `TRAITFLOW_KAFKA_BOOTSTRAP`,
`TRAITFLOW_REDIS_URL`). The defaults point at the embedded broker and Redis that
`traitflow services up` starts on ports of their own, so a demo never touches a Kafka
or Redis that already runs on the machine.

The environment is read in one place: `Settings.from_environ(environ)`, called once by
each entry point (the CLI's callback, the API's uvicorn factory) with the environment
it was started with. `Settings(...)` itself reads none, so a component given settings
cannot pick up a variable its caller did not (as Starlette's `Config(environ=...)`).

`Settings` is one class made of groups, each a module with its fields and the
validators that check them together: the connections (`traitflow.config_connections`),
what profiles are (`traitflow.config_profiles`), the API process
(`traitflow.config_api`); what the worker does is here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from attributes.limits import EventLimits
from traitflow import environ_source
from traitflow.config_api import ApiSettings
from traitflow.config_connections import (
    DEFAULT_KAFKA_BOOTSTRAP,
    DEFAULT_REDIS_URL,
    ConnectionSettings,
)
from traitflow.config_profiles import DEFAULT_DESTINATIONS, Destination, ProfileSettings

__all__ = [
    "DEFAULT_DESTINATIONS",
    "DEFAULT_KAFKA_BOOTSTRAP",
    "DEFAULT_REDIS_URL",
    "Destination",
    "Settings",
]


class Settings(BaseSettings, ConnectionSettings, ProfileSettings, ApiSettings):
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

    app_id: str = "traitflow"
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
    #: whether backfills run in a process of their own that `traitflow worker` starts
    #: beside its workers (`streams.backfill_process`), so that no live worker's event
    #: loop computes history; off: one of the workers runs them between its batches
    backfill_process: bool = True
    #: tries to produce a dead letter, and the seconds they may take in all, before it is
    #: parked in Redis (`streams.dead_letters`) and the batch goes on
    dead_letter_attempts: int = Field(default=3, ge=1)
    dead_letter_timeout_s: float = Field(default=5.0, gt=0)
    topic_partitions: int = Field(default=8, ge=1)
    rules_path: Path = Path("examples/rules.yaml")
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

    #: where the worker serves Prometheus metrics (on `api_host`); unset = not served.
    #: With several worker processes, process i serves on this port + i
    worker_metrics_port: int | None = None
    #: worker processes `traitflow worker` runs (one consumer group); 0 = one per core
    worker_processes: int = Field(default=0, ge=0)
    #: where embedded services keep pid files, logs and data
    home: Path = Path(".traitflow")

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
