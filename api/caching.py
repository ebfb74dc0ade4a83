"""Response headers that let callers cache a profile and see how fresh it is.

STUB (being replaced): sends the bytes as they are, without caching headers."""

from __future__ import annotations

from fastapi import Request, Response


def view_response(request: Request, view: bytes) -> Response:
    """A 200 with a stored view's JSON bytes as they are (or a 304 when the caller's
    copy is current)."""
    return Response(view, media_type="application/json")
