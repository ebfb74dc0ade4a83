"""API keys against a real Redis and a real `traitflow api` process: the CLI round trip,
no secret at rest, revocation within the cache TTL, and the Redis rate limit."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
import redis

from api.key_layout import ApiKeyLayout
from api.keys import hash_secret, parse_token
from tests.integration.conftest import ROOT, create_key, wait_until
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.services import Daemon

pytestmark = pytest.mark.integration

NOBODY = "/v1/collections/users/records/user_id/nobody"


def traitflow(settings: Settings, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "traitflow", *arguments],
        env=settings.child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def get(api_server: str, path: str, key: str | None) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.get(f"{api_server}{path}", headers=headers, timeout=5.0)


def everything_in_redis(client: redis.Redis, settings: Settings) -> bytes:
    """Every key and value under the session's prefix, as one blob to search."""
    parts: list[Any] = []
    for key in client.scan_iter(KeyLayout(settings.key_prefix).all_keys(), count=10_000):
        parts.append(key)
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key))
        elif kind == b"hash":
            parts.extend(item for pair in client.hgetall(key).items() for item in pair)
        elif kind == b"set":
            parts.extend(client.smembers(key))
        elif kind == b"zset":
            parts.extend(client.zrange(key, 0, -1))
    return b"".join(part for part in parts if isinstance(part, bytes))


def test_a_request_without_a_key_is_refused(api_server: str) -> None:
    response = get(api_server, NOBODY, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_admin_fixture_key_is_accepted(api: httpx.Client) -> None:
    response = api.get(NOBODY)
    assert response.status_code == 404
    assert response.json() == {"error": "no record with user_id = 'nobody' in 'users'"}


def test_cli_create_list_use_revoke(
    settings: Settings, api_server: str, redis_client: redis.Redis
) -> None:
    created = traitflow(settings, "keys", "create", "--name", "cli test", "--collection", "users")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    parsed = parse_token(token)
    assert parsed is not None, created.stdout
    key_id, secret = parsed
    assert "only time it is shown" in created.stderr
    assert secret not in created.stderr

    listed = traitflow(settings, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert "cli test" in line
    assert "collections users" in line
    assert "100" in line  # the default rate
    assert secret not in listed.stdout
    assert hash_secret(secret) not in listed.stdout

    # the secret is nowhere in Redis; its hash is in the key's record
    blob = everything_in_redis(redis_client, settings)
    assert secret.encode() not in blob
    assert token.encode() not in blob
    record = redis_client.get(ApiKeyLayout(settings.key_prefix).api_key(key_id))
    assert record is not None
    assert hash_secret(secret).encode() in record

    assert get(api_server, NOBODY, token).status_code == 404  # authenticated, in scope
    outside = get(api_server, "/v1/collections/accounts/records/id/x", token)
    assert outside.status_code == 403

    revoked = traitflow(settings, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked key {key_id}" in revoked.stdout
    started = time.monotonic()
    wait_until(
        lambda: get(api_server, NOBODY, token).status_code == 401,
        timeout=settings.api_key_cache_s + 5,
        what="the revoked key to be refused",
    )
    assert time.monotonic() - started <= settings.api_key_cache_s + 1.0
    assert key_id not in traitflow(settings, "keys", "list").stdout
    assert not redis_client.exists(ApiKeyLayout(settings.key_prefix).api_key(key_id))

    again = traitflow(settings, "keys", "revoke", key_id)
    assert again.returncode == 1
    assert f"error: no API key with id {key_id}" in again.stderr


def test_the_api_log_holds_no_secret(settings: Settings, api_server: str) -> None:
    token = create_key(settings, "log check", admin=True)
    _, secret = parse_token(token) or ("", "")
    assert get(api_server, NOBODY, token).status_code == 404
    assert get(api_server, NOBODY, token[:-1] + "!").status_code == 401
    assert secret not in Daemon("api", settings.home / "api").log_file.read_text()


def test_the_rate_limit_answers_429_with_retry_after(
    settings: Settings, api_server: str, redis_client: redis.Redis
) -> None:
    token = create_key(settings, "slow", collections=["users"], rate_per_s=1.0, burst=3)
    key_id = token.split("_")[1]
    with httpx.Client(base_url=api_server, headers={"Authorization": f"Bearer {token}"}) as client:
        statuses = [client.get(NOBODY).status_code for _ in range(3)]
        limited = client.get(NOBODY)
        assert statuses == [404, 404, 404]
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        assert limited.json() == {"error": "rate limit exceeded for this API key"}
        # the bucket is shared state in Redis, and forgotten once idle long enough to be full
        bucket = ApiKeyLayout(settings.key_prefix).rate_bucket(key_id)
        assert 0 < redis_client.pttl(bucket) <= 4000
        time.sleep(1.1)
        assert client.get(NOBODY).status_code == 404
        assert client.get(NOBODY).status_code == 429


def test_the_cli_explains_an_unreachable_redis(settings: Settings) -> None:
    unreachable = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    result = traitflow(unreachable, "keys", "list")
    assert result.returncode == 1
    assert "error: Redis at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
