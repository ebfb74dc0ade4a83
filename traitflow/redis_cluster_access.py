"""How the Redis Cluster clients (`traitflow.redis_cluster`) connect to the nodes: the
URL schemes they take, the TLS options a connection to a node learnt from the slot map
needs, and which failures are not tried again.

Why apart: TLS and credentials must be the same for every node, whether the URL named
it or `CLUSTER SLOTS` did (README, "Redis Cluster"), and a refusal must fail at once,
as in single-node mode, while a redirection or a lost connection is tried again for
about a minute (`traitflow.redis_cluster.REDIRECT_RETRIES`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from redis.asyncio.retry import Retry

from attributes.errors import StoreError

#: URL schemes a cluster node is named with: plain TCP, or TLS
_SCHEMES = ("redis", "rediss")


def checked_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise ValueError(f"Redis Cluster mode takes a redis:// or rediss:// URL, not {scheme}://")


def tls_options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options a connection to another node needs for TLS: the URL's scheme says
    whether, the `ssl_*` options how (the same CA, client certificate, hostname check)."""
    if urlsplit(url).scheme != "rediss":
        return {}
    return {"ssl": True} | {k: v for k, v in options.items() if k.startswith("ssl_")}


#: words of a refused TLS handshake or login, in an error or its causes (not any SSL
#: error: a connection a failing node drops mid-read is retried as any lost one)
_REFUSALS = (
    "CERTIFICATE_VERIFY_FAILED",
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "WRONG_VERSION_NUMBER",
    "WRONGPASS",
    "NOAUTH",
    "invalid username-password",
)


class ClusterAccessRefused(StoreError, redis.RedisError):
    """A node refused the TLS handshake or the credentials: not tried again (it would
    be refused the same way for a minute); its text is the refusal's."""


class RedirectRetry(Retry):
    """redis-py's `Retry` for redirections and lost connections, except refusals
    (`ClusterAccessRefused`), which fail at once as in single-node mode."""

    async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        async def once() -> Any:
            try:
                return await do()
            except (redis.ConnectionError, ConnectionError) as exc:
                if _refused(exc):
                    raise ClusterAccessRefused(str(exc)) from exc
                raise

        return await super().call_with_retry(once, fail, *args, **kwargs)


def _refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.AuthenticationError) or any(w in str(seen) for w in _REFUSALS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
