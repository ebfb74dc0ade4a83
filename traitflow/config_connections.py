"""Settings of the connections: the broker and Redis, how they are secured, and where
traitflow's keys are (`Settings` is made of this and the other groups: `traitflow.config`).

Why a group of its own: these are what a deployment changes first and checks most
(README, "Secured Kafka", "Secured Redis", "Redis Cluster"), and their validators
refuse half a configuration (TLS files without TLS, SASL without a mechanism) at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator, model_validator

from traitflow import kafka_client

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:19092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:16379/0"


class ConnectionSettings(BaseModel):
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
    #: where a cluster's keys go (docs/redis-cluster.md): "tag", every key under the
    #: one hash tag (option A); "spread", profiles and identities spread over
    #: `redis_buckets` hash tags, so over every shard (option B, `traitflow.spread_store`)
    redis_layout: Literal["tag", "spread"] = "tag"
    redis_buckets: int = Field(default=1024, ge=1, le=16384)
    #: how long a spread commit's claims hold before another worker may finish or undo
    #: them (`traitflow.spread_claims`): longer than any commit's steps take, and well
    #: beyond the workers' clock differences
    redis_claim_lease_s: float = Field(default=10.0, gt=0)

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
    def _kafka_security_is_complete(self) -> Self:
        if problem := kafka_client.security_problem(self):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _cluster_prefix_is_a_hash_tag(self) -> Self:
        """On a Redis Cluster every key must share one slot (`traitflow.redis_cluster`):
        the prefix becomes `{prefix}`; a tag off a cluster is a mistake, refused."""
        tagged = self.key_prefix.startswith("{")
        if self.redis_cluster and urlsplit(self.redis_url).scheme not in ("redis", "rediss"):
            raise ValueError(
                "TRAITFLOW_REDIS_CLUSTER=true takes a redis://host:port (or rediss:// for "
                "TLS) URL of a node, not a unix socket"
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
    def _spread_needs_a_cluster(self) -> Self:
        if self.redis_layout == "spread" and not self.redis_cluster:
            raise ValueError(
                "TRAITFLOW_REDIS_LAYOUT=spread spreads keys over a Redis Cluster's shards: "
                "it needs TRAITFLOW_REDIS_CLUSTER=true"
            )
        return self

    @model_validator(mode="after")
    def _redis_tls_is_consistent(self) -> Self:
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
