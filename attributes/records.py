"""A collection's field mapping: which fields of a profile's view its records include,
and under which names (Hightouch's field mapper). Pure: no I/O.

A mapping is `name -> path`, the path a dotted path into the stored view
(`attributes.lifetime_value`, `traits.email`, `_audiences.vip`, `id`). A record is
`{name: value}` in the mapping's order, leaving out the names whose path the view does
not have. The worker writes it next to the view; a read that finds none (a profile
written before the mapping, or under another one) maps the view the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: what a path may start with (the parts of a stored view), and whether it may go deeper
ROOTS: dict[str, bool] = {
    "id": False,
    "entity": False,
    "identities": True,
    "traits": True,
    "attributes": True,
    "_audiences": True,
    "first_seen": False,
    "last_seen": False,
    "version": False,
    "rules_version": False,
}


def field_problem(name: str, path: str) -> str | None:
    """Why `name -> path` cannot be a mapped field, or None when it can."""
    if not name.strip():
        return "a field name must not be blank"
    if name != name.strip() or "." in name:
        return f"field {name!r}: a name has no '.' and no surrounding spaces"
    parts = path.split(".")
    if parts[0] not in ROOTS:
        return (
            f"field {name!r}: path {path!r} starts with {parts[0]!r}, not one of {', '.join(ROOTS)}"
        )
    if len(parts) > 1 and not ROOTS[parts[0]]:
        return f"field {name!r}: path {path!r} goes inside {parts[0]!r}, which is a value"
    if not all(parts):
        return f"field {name!r}: path {path!r} has an empty segment"
    return None


@dataclass(frozen=True, slots=True)
class RecordMapping:
    """A collection's checked mapping (`field_problem` found nothing in it)."""

    #: (name, path split at its dots), in the configured order
    fields: tuple[tuple[str, tuple[str, ...]], ...]
    #: names the mapping: a record document written under another mapping is not served
    stamp: str

    @classmethod
    def of(cls, fields: Mapping[str, str]) -> RecordMapping:
        canonical = json.dumps(list(fields.items()), separators=(",", ":"))
        return cls(
            fields=tuple((name, tuple(path.split("."))) for name, path in fields.items()),
            stamp=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        )


_ABSENT: Any = object()


def mapped_record(view: Mapping[str, Any], mapping: RecordMapping) -> dict[str, Any]:
    """The record `mapping` makes of a decoded view."""
    record: dict[str, Any] = {}
    for name, parts in mapping.fields:
        value: Any = view
        for part in parts:
            value = value.get(part, _ABSENT) if isinstance(value, Mapping) else _ABSENT
            if value is _ABSENT:
                break
        if value is not _ABSENT:
            record[name] = value
    return record
