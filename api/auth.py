"""Who is calling: the `Principal` behind a request's API key, and what it may read.

STUB (being replaced): every request is an admin. The real version authenticates
`Authorization: Bearer <key>` against hashed keys in Redis and rate-limits per key;
its public names and signatures stay the ones below.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated API key and its scopes."""

    key_id: str
    admin: bool = False
    collections: frozenset[str] = frozenset()
    destinations: frozenset[str] = frozenset()

    def may_read_collection(self, collection: str) -> bool:
        return self.admin or collection in self.collections

    def may_read_destination(self, destination: str) -> bool:
        return self.admin or destination in self.destinations


async def authenticate(request: Request) -> Principal:
    """The request's principal (a FastAPI dependency); raises `ApiError` 401/429."""
    return Principal(key_id="stub", admin=True)
