"""Every Redis connection traitflow makes is made here, from the settings.

Why one place: the worker (redis-py asyncio), the API (`traitflow.resp`), the CLI and
the start checks (redis-py, blocking) must authenticate and verify TLS identically. A
client built from `settings.redis_url` alone would silently drop
TRAITFLOW_REDIS_USERNAME / _PASSWORD and the TLS files (README, "Secured Redis"), and
fail against a secured Redis only where it was forgotten.

`RedisTarget` is what a client needs: the URL and what the settings add to it. The
stores' `from_url` constructors take a `Redis` (a target, settings, or a bare URL,
which tests and benchmarks pass) and build their client through the functions below.
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis

from traitflow.config import Settings
from traitflow.resp import TIMEOUT_S, Address, RespClient


@dataclass(frozen=True)
class RedisTarget:
    """A Redis and how to reach it. Username and password over the URL's when set;
    the password and the URL (which may carry it) are left out of the repr."""

    url: str = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    ssl_check_hostname: bool = True
    #: on a Redis Cluster, the hash tag every key is under: connections go to the node
    #: serving its slot (`traitflow.redis_cluster`); None: a single Redis
    cluster_tag: str | None = None

    @classmethod
    def of(cls, redis: Redis) -> RedisTarget:
        if isinstance(redis, RedisTarget):
            return redis
        if isinstance(redis, str):
            return cls(redis)
        password = redis.redis_password
        return cls(
            redis.redis_url,
            username=redis.redis_username,
            password=password.get_secret_value() if password is not None else None,
            ssl_ca_file=_text(redis.redis_ssl_ca_file),
            ssl_cert_file=_text(redis.redis_ssl_cert_file),
            ssl_key_file=_text(redis.redis_ssl_key_file),
            ssl_check_hostname=redis.redis_ssl_check_hostname,
            cluster_tag=redis.key_prefix if redis.redis_cluster else None,
        )

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

    @property
    def credentials(self) -> tuple[str | None, str | None]:
        """(username, password) the connections authenticate with: the settings', else
        the URL's."""
        parts = urlsplit(self.url)
        username = self.username or (unquote(parts.username) if parts.username else None)
        if self.password is not None:
            return username, self.password
        return username, unquote(parts.password) if parts.password is not None else None

    @property
    def where(self) -> str:
        """Host and port (or the socket's path), for messages: never the URL."""
        address = Address.from_url(self.url)
        return address.path if address.path is not None else f"{address.host}:{address.port}"

    @property
    def bare_url(self) -> str:
        """The URL without its credentials: redis-py lets a URL's override the ones it
        is given, so clients get this and `redis_py_kwargs`' instead."""
        parts = urlsplit(self.url)
        if "@" not in parts.netloc:
            return self.url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))

    def redis_py_kwargs(self) -> dict[str, Any]:
        """What redis-py's `from_url` is given with `bare_url` (which keeps host, port
        and db): the credentials, and the TLS options for a rediss:// URL."""
        kwargs: dict[str, Any] = {}
        username, password = self.credentials
        if username is not None:
            kwargs["username"] = username
        if password is not None:
            kwargs["password"] = password
        if self.tls:  # redis-py refuses ssl_* options for a plain connection
            kwargs |= {
                "ssl_cert_reqs": "required",
                "ssl_ca_certs": self.ssl_ca_file,
                "ssl_certfile": self.ssl_cert_file,
                "ssl_keyfile": self.ssl_key_file,
                "ssl_check_hostname": self.ssl_check_hostname,
            }
        return kwargs

    def address(self) -> Address:
        """`traitflow.resp`'s address: the URL's, with the same credentials and TLS
        options redis-py is given."""
        username, password = self.credentials
        return dataclasses.replace(
            Address.from_url(self.url),
            username=username,
            password=password,
            ssl_ca_file=self.ssl_ca_file,
            ssl_cert_file=self.ssl_cert_file,
            ssl_key_file=self.ssl_key_file,
            ssl_check_hostname=self.ssl_check_hostname,
        )


#: what a client is made from: settings (entry points), a target, or a bare URL
Redis = Settings | RedisTarget | str


def _text(path: object) -> str | None:
    return None if path is None else str(path)


def async_client(target: Redis, **options: Any) -> aioredis.Redis:
    """A redis-py asyncio client (the worker, the CLI, background jobs)."""
    found = RedisTarget.of(target)
    if found.cluster_tag is not None:
        from traitflow.redis_cluster import cluster_client

        options.pop("connection_class", None)  # its own, on the slot's node
        kwargs = found.redis_py_kwargs() | options
        return cluster_client(found.bare_url, found.cluster_tag, **kwargs)
    return aioredis.Redis.from_url(found.bare_url, **(found.redis_py_kwargs() | options))


def sync_client(target: Redis, **options: Any) -> redis.Redis:
    """A blocking redis-py client (start checks, scripts)."""
    found = RedisTarget.of(target)
    if found.cluster_tag is not None:
        from traitflow.redis_cluster import cluster_sync_client

        kwargs = found.redis_py_kwargs() | options
        return cluster_sync_client(found.bare_url, found.cluster_tag, **kwargs)
    return redis.Redis.from_url(found.bare_url, **(found.redis_py_kwargs() | options))


def resp_client(target: Redis, timeout_s: float = TIMEOUT_S) -> RespClient:
    """The API's lean client (`traitflow.resp`)."""
    found = RedisTarget.of(target)
    if found.cluster_tag is not None:
        from traitflow.redis_cluster import ClusterRespClient

        return ClusterRespClient.for_prefix(found.address(), found.cluster_tag, timeout_s)
    return RespClient(found.address(), timeout_s)


def access_problem(exc: BaseException, target: Redis) -> str | None:
    """What an operator reads when Redis refused traitflow's credentials or the TLS
    handshake failed, naming the settings to check; None for any other failure (Redis
    down, busy: transient, retried). Never the password or the URL."""
    where = RedisTarget.of(target).where
    text = str(exc)
    causes = [exc, exc.__cause__, exc.__context__]
    if any(isinstance(cause, ssl.SSLError) for cause in causes) or "SSL" in text:
        return (
            f"TLS with Redis at {where} failed ({_first_line(text)}): check "
            "TRAITFLOW_REDIS_SSL_CA_FILE (the CA that signed Redis's certificate), "
            "TRAITFLOW_REDIS_SSL_CERT_FILE / TRAITFLOW_REDIS_SSL_KEY_FILE (when Redis asks "
            "for a client certificate), TRAITFLOW_REDIS_SSL_CHECK_HOSTNAME, and that "
            "TRAITFLOW_REDIS_URL is rediss:// for a TLS port"
        )
    words = ("WRONGPASS", "NOAUTH", "invalid username-password", "without any password")
    if isinstance(exc, redis.exceptions.AuthenticationError) or any(w in text for w in words):
        return (
            f"Redis at {where} refused traitflow's credentials ({_first_line(text)}): set "
            "TRAITFLOW_REDIS_PASSWORD (and TRAITFLOW_REDIS_USERNAME for an ACL user), or "
            "the password in TRAITFLOW_REDIS_URL, to what Redis expects (an embedded "
            "Redis started by an older traitflow has none: traitflow services down, then up)"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError) or "NOPERM" in text:
        return (
            f"the Redis user at {where} may not run what traitflow needs "
            f"({_first_line(text)}): give it the ACL rules in the README's "
            "'Secured Redis' section (TRAITFLOW_REDIS_USERNAME names the user)"
        )
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no detail"
