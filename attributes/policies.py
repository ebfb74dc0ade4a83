"""Merge policies: how a profile's fields are chosen when several sources provide them.

Each ingest topic is bound to a source (Adobe: a dataset; Hightouch: a sync), and a
profile keeps the identify traits of each source apart (`ProfileState.traits`:
source -> trait -> [event ms, messageId, value]). A merge policy turns those fragments
into the profile's fields:

- `timestamp_ordered`: per field, the value with the latest event time wins, whatever
  its source (ties: the larger messageId, then the later source name, so that every
  worker picks the same one);
- `source_precedence`: per field, the first source in `sources` that provides it wins;
  sources not listed are not merged at all.

The default policy's merge is what the worker materialises; a read may ask for another
policy by id and gets it computed from the stored fragments. Computed attributes are
not subject to policies: they aggregate the events of every source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

#: source -> trait -> [event ms, messageId, value]
Fragments = Mapping[str, Mapping[str, list[Any]]]


class MergePolicy(pydantic.BaseModel):
    """`{"kind": "source_precedence", "sources": ["crm", "web"]}`."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    kind: Literal["timestamp_ordered", "source_precedence"] = "timestamp_ordered"
    #: for `source_precedence`: the sources merged, highest precedence first
    sources: list[str] = []

    @pydantic.model_validator(mode="after")
    def _sources_fit_the_kind(self) -> MergePolicy:
        if self.kind == "source_precedence" and not self.sources:
            raise ValueError("a source_precedence policy lists at least one source")
        if self.kind == "timestamp_ordered" and self.sources:
            raise ValueError("a timestamp_ordered policy merges every source: no `sources`")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("a source is listed twice")
        return self


DEFAULT_POLICY = MergePolicy()
DEFAULT_POLICIES = {"default": DEFAULT_POLICY}


@dataclass(frozen=True, slots=True)
class Field:
    """A merged field: its value and where it came from."""

    value: Any
    source: str
    #: event time, epoch ms
    at: int


def merge_fields(fragments: Fragments, policy: MergePolicy) -> dict[str, Field]:
    """The profile's fields under `policy`, in the order sources first provided them."""
    merged: dict[str, Field] = {}
    if policy.kind == "source_precedence":
        for source in reversed(policy.sources):  # the first listed is written last
            for trait, (at, _, value) in fragments.get(source, {}).items():
                merged[trait] = Field(value, source, at)
        return merged
    best: dict[str, tuple[int, str, str]] = {}
    for source, traits in fragments.items():
        for trait, (at, mid, value) in traits.items():
            rank = (at, mid, source)
            if trait not in best or rank > best[trait]:
                best[trait] = rank
                merged[trait] = Field(value, source, at)
    return merged


def field_values(fragments: Fragments, policy: MergePolicy) -> dict[str, Any]:
    """`merge_fields` without provenance: what a profile view shows as `traits`."""
    return {trait: field.value for trait, field in merge_fields(fragments, policy).items()}
