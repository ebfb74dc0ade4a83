"""Pure re-shaping of stored profile views for the three read shapes (no I/O).

A stored view is the JSON document `attributes.profile.render_view` writes:
`{"id", "entity", "identities": {index: [values]}, "traits", "attributes",
"first_seen", "last_seen", "version"}`. Reads that serve it unchanged send the stored
bytes; the functions here are for the reads that cannot: a `fields` projection, the
activation API's `data` and the entities API's layout. Views are decoded and the
results encoded with msgspec (`encode`), which, unlike orjson, keeps integers past 64
bits as the worker wrote them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()

#: JSON for documents made of decoded views
encode = msgspec.json.Encoder().encode


def decode_view(raw: bytes) -> dict[str, Any]:
    """A stored view as a dict (a view that is not a JSON object is an empty one)."""
    view = _decoder.decode(raw)
    return view if isinstance(view, dict) else {}


def parse_fields(raw: str | None) -> list[str] | None:
    """`a,b , c.d` -> ["a", "b", "c.d"]; None when no field is named (no projection)."""
    if raw is None:
        return None
    fields = [field.strip() for field in raw.split(",")]
    return [field for field in fields if field] or None


def project(document: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """The parts of `document` that `fields` name, nested as they are in it.

    A field is a key or a dotted path into nested objects (`attributes.lifetime_value`).
    Paths that are absent, or that cross a value that is not an object, are left out;
    a path inside one that is already kept whole changes nothing. Keys keep the
    document's order, not the order of `fields`."""
    wanted: dict[str, Any] = {}  # a trie of the paths; True marks "keep whole"
    for field in fields:
        node = wanted
        parts = field.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is True:
                break
            node = child
        else:
            node[parts[-1]] = True
    return _pick(document, wanted)


def _pick(document: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    picked: dict[str, Any] = {}
    for key, value in document.items():
        want = wanted.get(key)
        if want is None:
            continue
        if want is True:
            picked[key] = value
        elif isinstance(value, Mapping):
            inner = _pick(value, want)
            if inner:
                picked[key] = inner
    return picked


def activation_data(
    view: Mapping[str, Any], attributes: Sequence[str], traits: Sequence[str] = ()
) -> dict[str, Any]:
    """The activation API's `data`: the destination's attributes that the view has, in
    the destination's order. A name that is an audience's, not an attribute's, is the
    profile's membership (true or false), as a column of RudderStack's customer-360
    table would be. Then the destination's `traits` the profile has (`*`: all of them,
    in the view's order); an attribute's column wins over a trait of the same name."""
    values = view.get("attributes")
    if not isinstance(values, Mapping):
        return {}
    audiences = view.get("_audiences")
    if not isinstance(audiences, Mapping):
        audiences = {}
    data = {
        name: values[name] if name in values else audiences[name]
        for name in attributes
        if name in values or name in audiences
    }
    held = view.get("traits")
    if traits and isinstance(held, Mapping):
        for name in held if "*" in traits else traits:
            if name in held and name not in data:
                data[name] = held[name]
    return data


def segment_membership(view: Mapping[str, Any]) -> dict[str, Any]:
    """The view's audiences as Adobe's `segmentMembership`: those the profile is in,
    `realized`, under the namespace `ups` (Adobe's own segments)."""
    audiences = view.get("_audiences")
    if not isinstance(audiences, Mapping):
        return {}
    realized = {name: {"status": "realized"} for name, member in audiences.items() if member}
    return {"ups": realized}


def adobe_identities(view: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The view's identities as Adobe lists them: `{"id", "namespace": {"code"}}`, the
    namespace code being our index name."""
    identities = view.get("identities")
    if not isinstance(identities, Mapping):
        return []
    return [
        {"id": value, "namespace": {"code": index}}
        for index, values in identities.items()
        if isinstance(values, list)
        for value in values
    ]


def adobe_entity(
    view: Mapping[str, Any],
    fields: Iterable[str] | None = None,
    requested: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One profile in the layout of Adobe's `/access/entities`: `{"entityId", "entity":
    {"identities", "traits", "attributes"}, "lastModifiedAt"}`, `fields` projecting the
    `entity` part; `requested` (batch reads) adds the `requestedIdentities`."""
    entity: dict[str, Any] = {
        "identities": adobe_identities(view),
        "traits": view.get("traits") or {},
        "attributes": view.get("attributes") or {},
    }
    if "_audiences" in view:
        entity["segmentMembership"] = segment_membership(view)
    if fields is not None:
        entity = project(entity, fields)
    shaped: dict[str, Any] = {}
    if requested is not None:
        shaped["requestedIdentities"] = list(requested)
    shaped["entityId"] = view.get("id")
    shaped["entity"] = entity
    shaped["lastModifiedAt"] = view.get("last_seen")
    return shaped
