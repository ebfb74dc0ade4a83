"""Reads under another merge policy, or with provenance: the part of a view recomputed.

A stored view holds the default policy's traits (`attributes.policies`). A read that
names another configured policy, or asks where each field came from, gets the view
with its traits merged again from the per-source fragments in the stored state. That
read fetches the state with the view (one round trip still) and decodes it: a few
microseconds more than the plain read, which the other reads never pay.

Provenance, when asked for, is a `provenance` member of the record:

    {"policy": "crm-first",
     "traits": {"plan": {"source": "crm", "timestamp": "2026-11-10T12:00:00.000Z"}},
     "attributes": "computed from the events of every source"}

Computed attributes are the same under every policy: they aggregate events, not
source fields.
"""

from __future__ import annotations

from typing import Any

from api.errors import ApiError
from api.policy_store import PolicyStore
from api.shapes import decode_view
from attributes.events import iso_from_ms
from attributes.policies import MergePolicy, merge_fields
from attributes.profile import decode_state
from traitflow.config import Settings

ATTRIBUTES_PROVENANCE = "computed from the events of every source"


async def chosen_policy(
    settings: Settings, made: PolicyStore, policy_id: str | None
) -> tuple[str, MergePolicy]:
    """The policy a read names (the default when it names none), configured or made
    through the API (`made`); a 404 when unknown."""
    if policy_id is None:
        policy_id = settings.default_merge_policy
    policy = settings.merge_policies.get(policy_id) or await made.get(policy_id)
    if policy is None:
        known = ", ".join(sorted([*settings.merge_policies, *await made.all()]))
        raise ApiError(404, f"merge policy {policy_id!r} not found (known: {known})")
    return policy_id, policy


def reshaped(
    view: bytes, state: bytes, policy_id: str, policy: MergePolicy, provenance: bool
) -> dict[str, Any]:
    """The view with its traits merged under `policy`, and with provenance if asked."""
    document = decode_view(view)
    fields = merge_fields(decode_state(state).source_traits, policy)
    document["traits"] = {trait: field.value for trait, field in fields.items()}
    if provenance:
        document["provenance"] = {
            "policy": policy_id,
            "traits": {
                trait: {"source": field.source, "timestamp": iso_from_ms(field.at)}
                for trait, field in fields.items()
            },
            "attributes": ATTRIBUTES_PROVENANCE,
        }
    return document
