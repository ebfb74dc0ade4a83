"""Dotted field paths into an event, compiled once at rule load.

`properties.revenue` reads `event.properties["revenue"]`; `event` reads the event name.
The first segment must name a part of the envelope, so a typo such as
`propertes.revenue` fails at load instead of silently matching nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attributes.errors import RuleError
from attributes.events import Event

Getter = Callable[[Event], Any]

#: Envelope parts a path may start with, and whether deeper segments are allowed.
_ROOTS: dict[str, bool] = {
    "properties": True,
    "traits": True,
    "context": True,
    "event": False,
    "type": False,
    "messageId": False,
    "userId": False,
    "anonymousId": False,
    "groupId": False,
    "timestamp": False,
}

MISSING: Any = object()
"""Returned by a getter when the path does not exist in the event."""


class InvalidPath(RuleError):
    """A field path that names no part of an event; the message says why."""


def compile_path(path: str) -> Getter:
    """Compile `path` into a function event -> value (or MISSING)."""
    segments = path.split(".")
    if not path or any(not segment for segment in segments):
        raise InvalidPath(f"field path {path!r} has an empty segment")
    root, rest = segments[0], tuple(segments[1:])
    if root not in _ROOTS:
        known = ", ".join(sorted(_ROOTS))
        raise InvalidPath(f"field path {path!r} must start with one of: {known}")
    if rest and not _ROOTS[root]:
        raise InvalidPath(f"field path {path!r}: {root!r} has no nested fields")

    if not rest:
        return lambda event: getattr(event, root)
    if len(rest) == 1:
        (key,) = rest

        def get_one(event: Event) -> Any:
            return getattr(event, root).get(key, MISSING)

        return get_one

    def get_nested(event: Event) -> Any:
        node: Any = getattr(event, root)
        for key in rest:
            if not isinstance(node, dict):
                return MISSING
            node = node.get(key, MISSING)
            if node is MISSING:
                return MISSING
        return node

    return get_nested
