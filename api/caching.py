"""Response headers that let callers cache a profile and see how fresh it is.

Every single-profile 200 goes through `view_response`, which sends the stored view's
bytes as they are with:

- `ETag`: a strong validator, the BLAKE2b-64 of the bytes (the bytes are the
  representation, so equal bytes are an equal profile; cheap next to the read);
- `Cache-Control: no-cache`: a caller may keep a copy but must revalidate it before
  each use, with `If-None-Match`; a match is a `304 Not Modified` without a body;
- `X-Profile-Version`: the profile's `version` (it grows with every write of the
  profile), read from the end of the stored JSON without parsing it.

No `Last-Modified`. A view carries no time of its own write, only `last_seen`, the
time of the latest *event* (event time, set by the sender). That is not when the
representation last changed: a windowed attribute changes when its window moves with no
new event, and a late event changes the profile without moving `last_seen`. Sent as
`Last-Modified` it would make `If-Modified-Since` answer 304 for a changed profile.
Freshness is the version header (and `last_seen` in the body); revalidation is the
ETag.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from fastapi import Request, Response

VERSION_HEADER = "X-Profile-Version"
CACHE_CONTROL = "no-cache"

#: OpenAPI `responses` entries for a route answered by `view_response`.
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "ETag": {
                "description": "strong validator of this representation",
                "schema": {"type": "string"},
            },
            "Cache-Control": {
                "description": "`no-cache`: keep a copy, revalidate it with If-None-Match",
                "schema": {"type": "string"},
            },
            VERSION_HEADER: {
                "description": "the profile's version; grows with every write",
                "schema": {"type": "integer"},
            },
        }
    },
    304: {"description": "If-None-Match matched: the caller's copy is current"},
}

_VERSION_KEY = b'"version":'


def etag(view: bytes) -> str:
    return f'"{hashlib.blake2b(view, digest_size=8).hexdigest()}"'


def view_version(view: bytes) -> int | None:
    """The `version` of a stored view, or None when it has none.

    `render_view` puts `version` last, so the document ends `"version":N}` and the
    number is read from its tail (`tests/unit/test_api_caching.py` pins that order
    on a real view); any other layout falls back to parsing the document."""
    start = view.rfind(_VERSION_KEY)
    if start != -1:
        digits = view[start + len(_VERSION_KEY) : -1]
        if view.endswith(b"}") and digits.isdigit():
            return int(digits)
    try:
        document = orjson.loads(view)
    except orjson.JSONDecodeError:
        return None
    version = document.get("version") if isinstance(document, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def matches(if_none_match: str, tag: str) -> bool:
    """Whether an `If-None-Match` value names `tag` (weak comparison, RFC 9110 13.1.2:
    `W/` prefixes are ignored; `*` matches any current representation)."""
    if if_none_match.strip() == "*":
        return True
    opaque = tag.removeprefix("W/")
    return any(
        candidate.strip().removeprefix("W/") == opaque for candidate in if_none_match.split(",")
    )


def view_response(request: Request, view: bytes) -> Response:
    """A 200 with a stored view's JSON bytes as they are (or a 304 when the caller's
    copy is current)."""
    tag = etag(view)
    headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL}
    version = view_version(view)
    if version is not None:
        headers[VERSION_HEADER] = str(version)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and matches(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    return Response(view, media_type="application/json", headers=headers)
