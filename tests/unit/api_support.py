"""Serving an app in API unit tests: every data route wants an API key.

app = create_app(settings, store=store, keys=MemoryKeyStore())
async with serve(app) as client:                # sends an admin key
    await client.get("/v1/collections/users/records/id/u-1")
async with serve(app, key=None) as anonymous:   # sends none
    ...
token = await add_key(state_of(app).keys, collections=["users"])   # inside `serve`
await client.get(path, headers=bearer(token))  # a request with another key
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from api.app import create_app
from api.keys import ApiKey, KeyStore, MemoryKeyStore, new_key
from api.policy_store import MemoryPolicyStore
from api.state import state_of
from traitflow.config import Settings
from traitflow.rule_catalog import MemoryRuleCatalog
from traitflow.store import ProfileStore

ADMIN = "admin"
"""`serve(app, key=ADMIN)` (the default): create an admin key and send it."""


async def add_key(
    keys: KeyStore,
    name: str = "test",
    *,
    admin: bool = False,
    collections: Iterable[str] = (),
    destinations: Iterable[str] = (),
    rate_per_s: float | None = None,
    burst: int | None = None,
) -> str:
    """Create a key in `keys`; returns the key to send."""
    record, token = new_key(
        name,
        admin=admin,
        collections=collections,
        destinations=destinations,
        rate_per_s=rate_per_s,
        burst=burst,
    )
    await keys.create(record)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def serve(app: FastAPI, key: str | None = ADMIN) -> AsyncIterator[httpx.AsyncClient]:
    """Run `app`'s lifespan and yield a client for it that sends `key`: `ADMIN` (an
    admin key made for the occasion), None (no key) or a key of yours.

    An app built without `keys=`, `policies=` or `catalog=` gets a `MemoryKeyStore`, a
    `MemoryPolicyStore` and a `MemoryRuleCatalog` here instead of the Redis ones its
    lifespan made (which have not connected yet): unit tests do no I/O."""
    async with app.router.lifespan_context(app):
        state = state_of(app)
        if not isinstance(state.keys, MemoryKeyStore):
            await state.keys.close()
            state.keys = MemoryKeyStore()
        if not isinstance(state.policies, MemoryPolicyStore):
            await state.policies.close()
            state.policies = MemoryPolicyStore()
        if not isinstance(state.catalog, MemoryRuleCatalog):
            await state.catalog.close()
            state.catalog = MemoryRuleCatalog()
        if key == ADMIN:
            key = await add_key(state.keys, "test-admin", admin=True)
        headers = bearer(key) if key is not None else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=headers
        ) as client:
            yield client


@asynccontextmanager
async def client_for(
    settings: Settings, store: ProfileStore, *, token: bool = True, **scopes: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app over `store`: it sends an admin key, a key with only `scopes`
    (`collections=[...]`, `destinations=[...]`) when they are given, or none with
    `token=False`."""
    app = create_app(settings, store=store, keys=MemoryKeyStore())
    async with serve(app, key=ADMIN if token and not scopes else None) as client:
        if scopes:
            client.headers.update(bearer(await add_key(state_of(app).keys, **scopes)))
        yield client


class CountingKeys(MemoryKeyStore):
    """A key store that records each key id looked up: what the abuse limits (unknown
    keys remembered, failed authentications limited) must keep from reaching Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []

    async def get(self, key_id: str) -> ApiKey | None:
        self.gets.append(key_id)
        return await super().get(key_id)


def keys_of(app: FastAPI) -> CountingKeys:
    """The app's key store, made with `keys=CountingKeys()`."""
    keys = state_of(app).keys
    assert isinstance(keys, CountingKeys)
    return keys
