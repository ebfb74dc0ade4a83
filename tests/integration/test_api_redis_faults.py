"""A real `traitflow api` process on a real redis-server of the test's own, failing
every way this test can make it fail: out of memory, a read-only replica, paused
(SIGSTOP), stopped, and loading its dataset after a restart. Every route then answers
a JSON 503 with Retry-After and nothing of Redis (no address, port or error text),
within the API's Redis timeout; the log says what and where, once per request; the
metric counts each by kind; /readyz names the failing dependency, without an address.
Between faults the API recovers by itself."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.errors import UNAVAILABLE
from tests.integration.conftest import create_key, wait_until
from tests.integration.workers import own_service, running_api
from traitflow.config import Settings
from traitflow.resp import TIMEOUT_S
from traitflow.services import Service, free_port

pytestmark = pytest.mark.integration

MADE = "made"  # a merge policy made through the API: reads naming it read Redis
RECORD = "/v1/collections/users/records/user_id/nobody"
ENTITIES = "/access/entities?schema.name=_xdm.context.profile&entityId=nobody&entityIdNS=user_id"
POLICIES = "/config/mergePolicies"
#: every route that reads Redis: records (one, with a policy, a batch), activation,
#: entities (GET and POST), merge policies (list, read, create, replace, delete)
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", RECORD, None),
    ("GET", f"{RECORD}?merge_policy={MADE}&provenance=true", None),
    ("POST", "/v1/collections/users/records/batch", {"lookups": [{"index": "id", "value": "x"}]}),
    (
        "POST",
        "/v2/activation",
        {
            "entity": "user",
            "destinationId": "web-personalisation",
            "id": {"type": "user_id", "value": "nobody"},
        },
    ),
    ("GET", ENTITIES, None),
    (
        "POST",
        "/access/entities",
        {
            "schema": {"name": "_xdm.context.profile"},
            "identities": [{"entityId": "nobody", "entityIdNS": {"code": "user_id"}}],
        },
    ),
    ("GET", POLICIES, None),
    ("GET", f"{POLICIES}/{MADE}", None),
    ("POST", POLICIES, {"id": "another", "kind": "timestamp_ordered"}),
    ("PUT", f"{POLICIES}/{MADE}", {"kind": "timestamp_ordered"}),
    ("DELETE", f"{POLICIES}/{MADE}", None),
]
#: keys Redis loads at the end, a millisecond each (`--key-load-delay`): it is loading
#: for longer than the test needs, and the test stops it then
LOADED_KEYS = 30_000
#: what Redis's replies and the client's errors say: none of it may reach a caller
REDIS_WORDS = ("LOADING", "loading", "READONLY", "read only", "OOM", "maxmemory", "refused",
               "did not answer", "Errno", "replica", "script")  # fmt: skip


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A redis-server of the test's own (never the session's: it is paused and
    stopped). A restart with other options keeps its pid file, so this stops that too."""
    directory = tmp_path_factory.mktemp("api-faults")
    with own_service(Service("redis", directory, "127.0.0.1", free_port())) as service:
        yield service


async def call_every_route(base: str, token: str) -> list[tuple[str, httpx.Response]]:
    """Every route at once (a paused Redis then costs one timeout, not one each)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.request(method, path, json=body) for method, path, body in ROUTES)
        )
    return [(f"{method} {path}", r) for (method, path, _), r in zip(ROUTES, responses, strict=True)]


class FaultyApi:
    """The API process under test, and what it is checked against after each fault."""

    def __init__(self, base: str, token: str, redis_port: int, log_file: Path) -> None:
        self.base, self.token, self.port, self.log_file = base, token, redis_port, log_file
        self.counted: dict[str, float] = {}

    def unavailable(self, kind: str, ready_error: str) -> float:
        """Every route is a bare 503, counted as `kind` and logged once with where
        Redis is; /readyz says `ready_error`. Returns the seconds the routes took."""
        logged_before = self.logged(kind)
        started = time.monotonic()
        answers = asyncio.run(call_every_route(self.base, self.token))
        took = time.monotonic() - started
        for route, response in answers:
            assert response.status_code == 503, (kind, route, response.text)
            assert response.headers["content-type"] == "application/json", (kind, route)
            assert response.headers["retry-after"] == "1", (kind, route)
            assert response.json() == {"error": UNAVAILABLE}, (kind, route)
            self.assert_says_nothing_of_redis(response)
        ready = httpx.get(f"{self.base}/readyz", timeout=10)
        assert ready.status_code == 503, (kind, ready.text)
        assert ready.json() == {"status": "unavailable", "failing": ["redis"], "error": ready_error}
        self.assert_says_nothing_of_redis(ready, allowed=ready_error)
        self.counted[kind] = self.counted.get(kind, 0) + len(ROUTES)
        assert self.errors_counted() == self.counted
        # the log: once per request, with Redis's address and the error (uvicorn's log
        # level is WARNING; the lines come in when the process flushes, so wait a little)
        wait_until(lambda: self.logged(kind) >= logged_before + len(ROUTES), 5, f"{kind} log")
        assert self.logged(kind) == logged_before + len(ROUTES)
        return took

    def assert_says_nothing_of_redis(self, response: httpx.Response, allowed: str = "") -> None:
        text = response.text.replace(allowed, "")
        for word in ("127.0.0.1", str(self.port), *REDIS_WORDS):
            assert word not in text, (word, response.text)

    def errors_counted(self) -> dict[str, float]:
        metrics = httpx.get(f"{self.base}/metrics", timeout=10).text
        found = re.findall(
            r'^traitflow_api_redis_errors_total\{kind="(\w+)"\} (\S+)$', metrics, re.M
        )
        return {kind: float(value) for kind, value in found}

    def logged(self, kind: str) -> int:
        """Lines of the API's log for one 503, naming where Redis is and the kind."""
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return text.count(f": 503, Redis at 127.0.0.1:{self.port} failed ({kind})")

    def serves(self) -> bool:
        """The API reads again (no such profile: 404)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            return httpx.get(f"{self.base}{RECORD}", headers=headers, timeout=10).status_code == 404
        except httpx.HTTPError:
            return False


def test_every_route_answers_every_redis_failure_with_a_bare_json_503(
    settings: Settings, own_redis: Service
) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    own = settings.isolated(f"tfapifaults-{uuid.uuid4().hex[:8]}", redis_url=url)
    token = create_key(own, "faults-admin", admin=True, rate_per_s=100_000.0, burst=100_000)
    client = redis.Redis.from_url(url)
    try:
        with running_api(own, "faults-api") as base:
            api = FaultyApi(base, token, own_redis.port, own.home / "faults-api" / "faults-api.log")
            made = httpx.post(
                f"{base}{POLICIES}",
                json={"id": MADE, "kind": "timestamp_ordered"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert made.status_code == 201, made.text
            filler = client.pipeline(transaction=False)  # for the slow load at the end
            for n in range(LOADED_KEYS):
                filler.set(f"filler:{n}", "x")
            filler.execute()
            assert api.serves()
            assert httpx.get(f"{base}/readyz").json() == {"status": "ready"}

            # out of memory (noeviction): every request's rate-limit charge is a write
            client.config_set("maxmemory", 1)
            api.unavailable("OOM", "redis: OOM")
            client.config_set("maxmemory", 0)
            wait_until(api.serves, what="the API back after OOM")

            # a replica of nothing: writes are refused
            client.replicaof("127.0.0.1", free_port())
            api.unavailable("READONLY", "redis: READONLY")
            client.replicaof("NO", "ONE")
            wait_until(api.serves, what="the API back after READONLY")

            # paused: nothing answers; each request fails within the client's timeout
            pid = own_redis.pid()
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                took = api.unavailable(
                    "timeout", f"redis: no answer within {own.api_ready_timeout_s:g} s"
                )
            finally:
                os.kill(pid, signal.SIGCONT)
            assert took < TIMEOUT_S * 1.5 + 2.0, f"the routes took {took:.1f} s"
            wait_until(api.serves, what="the API back after the pause")

            # stopped: connections refused. Its data saved first, for the restart below
            client.save()
            own_redis.stop()
            api.unavailable("connection", "redis: connection")

            # restarted, loading that data slowly (a delay per key; Redis answers
            # LOADING to reads and writes while it loads, INFO and CONFIG as usual)
            client.close()
            slow = redis.Redis(port=own_redis.port)
            loading = dataclasses.replace(
                own_redis,
                options=("--appendonly", "no", "--key-load-delay", "1000",
                         "--loading-process-events-interval-bytes", "1024"),
            )  # fmt: skip
            loading.start()
            wait_until(lambda: is_loading(slow), what="Redis to be loading")
            api.unavailable("LOADING", "redis: LOADING")
            assert is_loading(slow), "loaded before the test was done: more keys"
            slow.close()
    finally:
        client.close()


def is_loading(client: redis.Redis) -> bool:
    try:
        return bool(client.info("persistence")["loading"])
    except redis.exceptions.ConnectionError:
        return False
