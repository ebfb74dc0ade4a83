"""How many profiles each entity holds, per source and per identity namespace (Adobe's
"preview sample status"), kept without scanning.

A profile is counted in categories: `profile` (every profile with a view), `source:
{name}` (it holds `identify` traits from that source: the per-source fragments a
merge policy chooses from) and `namespace:{type}` (it holds at least one identity of
that type). Adobe counts fragments per dataset and namespace; traitflow keeps one
profile per person, so it counts profiles. Attribute states do not record which
source fed them, so a source whose events only feed computed attributes is not
counted as held.

The counting is the audience sizes' (`traitflow.audience_counts`): a profile is in
its categories as it is in audiences, and each write carries the categories it
enters and exits (`recount`, against the list its state was last counted in,
`ProfileState.counted`), its merged-away profiles' categories, and whether it
expires; its commit adjusts the counts in the same atomic step, and an anonymous-only
profile Redis expires leaves them with its deadline. A profile deleted by its source
or erased is in no category.

Counts start when this counting is deployed: a state stored before has no list
(`counted` is None), was never counted, and is counted at its next write; or at once,
workers stopped, by `traitflow profiles recount` (`traitflow.profile_recount`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from attributes.profile import ProfileState, encode_state
from traitflow.audience_counts import Moves
from traitflow.store import ProfileWrite

PROFILE = "profile"
SOURCE = "source:"
NAMESPACE = "namespace:"


def categories(state: ProfileState) -> list[str]:
    """What the profile is counted in, in a fixed order; nothing once deleted."""
    if state.deleted:
        return []
    held = [PROFILE]
    held += sorted(SOURCE + source for source, traits in state.source_traits.items() if traits)
    held += sorted(NAMESPACE + kind for kind, values in state.identities.items() if values)
    return held


def recount(write: ProfileWrite) -> None:
    """Set the categories `write` enters and exits, and what its state is counted in
    from now on (its encoding follows). Once per write, when the state is final."""
    state = write.state
    after = categories(state)
    before = state.counted
    if before == after:
        return
    held = before or ()
    write.categories_entered = [name for name in after if name not in held]
    write.categories_exited = [name for name in held if name not in after]
    state.counted = after
    if write.erasure is None:  # an erased state is not stored
        write.encoded_state = encode_state(state)


def category_moves(write: ProfileWrite) -> Moves:
    """A write's categories, as `SizeChanges` counts them (`audience_moves`)."""
    return (
        write.state.counted or (),
        write.categories_entered,
        write.categories_exited,
        write.categories_departed,
        write.categories_departed_expiring,
    )


def departures(
    merges: Iterable[tuple[str, str]],
    states: Mapping[str, ProfileState],
    expiring: set[str],
) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, str]]]]:
    """Survivor -> the categories of the kept profiles merged into it (directly or
    through a profile merged into it first), and -> (profile, category) of the
    expiring ones: they leave them, deleted by the same commit."""
    departed: dict[str, list[str]] = {}
    departed_expiring: dict[str, list[tuple[str, str]]] = {}
    for absorbed, survivor in merges:
        held = states[absorbed].counted or ()
        gone = departed.pop(absorbed, [])
        gone_expiring = departed_expiring.pop(absorbed, [])
        if absorbed in expiring:
            gone_expiring += ((absorbed, name) for name in held)
        else:
            gone += held
        departed.setdefault(survivor, []).extend(gone)
        departed_expiring.setdefault(survivor, []).extend(gone_expiring)
    return departed, departed_expiring


def composition(counts: Mapping[str, int]) -> dict[str, Any]:
    """The counts read (`ProfileStore.profile_counts`) as profiles, per source and per
    namespace; a category no profile is in any more is left out."""
    sources = {
        name.removeprefix(SOURCE): n for name, n in counts.items() if name.startswith(SOURCE) and n
    }
    namespaces = {
        name.removeprefix(NAMESPACE): n
        for name, n in counts.items()
        if name.startswith(NAMESPACE) and n
    }
    return {
        "profiles": counts.get(PROFILE, 0),
        "sources": dict(sorted(sources.items())),
        "namespaces": dict(sorted(namespaces.items())),
    }


def tally(states: Iterable[ProfileState]) -> dict[str, int]:
    """The counts by a pass over `states` (the batch answer the kept ones must equal)."""
    counts: dict[str, int] = {}
    for state in states:
        for name in categories(state):
            counts[name] = counts.get(name, 0) + 1
    return counts
