"""Merging two profiles into one, as if all their events had arrived under one id.

Identity stitching (`attributes.stitching`) finds that two profiles are one person;
`merge_states` folds one state into the other. Every part merges the way it is
computed, so the merged profile is exactly what one profile fed all the events of
both would be (`tests/unit/test_merge.py` checks that against a single fold):

- attribute states with their aggregator's `merge` (windows bucket by bucket);
- identify traits per source and field, the latest by (event time, messageId), as
  `apply_event` picks them;
- identities as a union, the survivor's first;
- applied offsets per input partition: the higher floor (a floor is a fact about the
  whole partition, not about one profile) and every offset above it that either
  applied (`attributes.profile.merge_offsets`);
- first and last seen as the earlier and the later.

The version becomes the sum of both: above either, so that a reader's cached copy of
either profile is stale, and still growing with every write after.
"""

from __future__ import annotations

from attributes.profile import ProfileState, add_identity, merge_offsets
from attributes.ruleset import RuleSet


def merge_states(survivor: ProfileState, absorbed: ProfileState, rules: RuleSet) -> None:
    """Fold `absorbed` into `survivor`, in place. Both must fit `rules`
    (`attributes.profile.reconcile`). `survivor` may share parts of `absorbed`'s
    attribute states afterwards: `absorbed` is done with (it is deleted). A profile a
    source deleted brings only its identities and applied offsets."""
    for kind, values in absorbed.identities.items():
        for value in values:
            add_identity(survivor, kind, value)
    merge_offsets(survivor, absorbed)
    survivor_seen = survivor.version > 0 and not survivor.deleted
    survivor.version += absorbed.version
    if absorbed.deleted or not absorbed.version:
        return
    survivor.deleted = False
    if not survivor_seen:  # what there is of it is absorbed's
        survivor.first_seen, survivor.last_seen = absorbed.first_seen, absorbed.last_seen
    else:
        survivor.first_seen = min(survivor.first_seen, absorbed.first_seen)
        survivor.last_seen = max(survivor.last_seen, absorbed.last_seen)
    for source, traits in absorbed.source_traits.items():
        kept = survivor.source_traits.setdefault(source, {})
        for trait, entry in traits.items():
            current = kept.get(trait)
            if current is None or (entry[0], entry[1]) > (current[0], current[1]):
                kept[trait] = list(entry)
    merged_attributes = survivor.attributes
    for attribute in (*rules.attributes, *rules.shadows):
        theirs = absorbed.attributes.get(attribute.key)
        if theirs is None:
            continue
        mine = merged_attributes.get(attribute.key)
        merger = attribute.window if attribute.window is not None else attribute.aggregator
        merged_attributes[attribute.key] = theirs if mine is None else merger.merge(mine, theirs)
