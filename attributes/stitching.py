"""Identity stitching: which profile each event of a batch belongs to, and which
profiles turn out to be one person.

The worker reads where every identity of a batch points today (the identity index),
loads those profiles, and hands both to `Stitcher`, which goes through the events in
order. An event belongs with its highest-priority identity's profile (a new one if
that identity is new); each further identity it carries is linked to that profile if
new, and its profile merged into that one if it has another. A link or merge that
would give a profile more values of a type than the type's `limit` is refused: the
event is applied without it, and the refusal is reported (`Refusal`). With
`stitching: false` nothing is merged; new identities are still linked.

Which id survives a merge is deterministic: the profile whose id was made from the
higher-priority identity type (`IdentityRules.id_rank`), then the one seen first (the
earliest event time among the events it has been given, those of this batch so far
included, so that where batches are cut changes nothing), then the smaller id. So
logging in (a `user_id` arriving with a known `anonymous_id`) moves the anonymous
profile under the user's id, and reads by id keep working.

Trusted links. Each source has a trust level (`Trust`, `TRAITFLOW_SOURCE_TRUST`), because
an event's identities are only what its sender says they are, and a link is what lets
a read by one identity serve a profile. A browser SDK's write key is public: anyone
can send `identify {anonymousId: <mine>, traits: {email: <victim's>}}` to it. Were
that linked, `<mine>` would point at the victim's profile, and a read by it (the
attacker's own browser asking for its personalisation) would serve the victim's
data. So:

- `trusted` (a CRM, your backend): links and merges as above.
- `untrusted` (the default, for a source that does not say): an event links nothing.
  It is applied to the profile of its anonymous id if it carries one (the device it
  came from: sending another device's id only adds events to that profile), else to
  its highest-priority identity's profile (made if new); every other identity it
  carries that this profile does not hold already is refused. The victim's email or
  userId with the attacker's anonymous id: the event stays on the attacker's device
  profile. The attacker's userId with the victim's anonymous id: the event goes to
  the profile holding that anonymous id, which gains no identity. A new email with
  the attacker's anonymous id is not linked either (the victim's CRM record, arriving
  later by that email, would land on the attacker). An email-only identify goes to
  the email's profile, as any event goes to the profile an identity names: an
  untrusted source can add to a profile whose identity it knows, never connect two.
- `authenticated` (a source whose events' userId the sender cannot choose: server
  calls made for a logged-in session, a proxy that checks the session): an event whose
  first identity is of the entity's primary type (a user's `user_id`) is applied to
  that profile, and may link to it anonymous ids that no known profile holds (a
  *known* profile holds an identity of a type that is not anonymous): a new one, or
  one whose profile has only anonymous ids, which is merged in (the login). It may not
  merge two known profiles, link an email or any other identity, nor move an
  anonymous id that a known profile holds. An event without a primary identity is
  handled as untrusted. Not the default, because a sender who can choose the userId
  (the victim's, with its own anonymous id) would take over the victim's profile.

A link an event may not make is refused as a limit refuses one (`Refusal`, with the
source and `kind` "merge": the identity belongs to another profile, or "link": it is
new), and the event is applied without it: its attributes and traits count toward the
profile named above (its anchor's: `anchored`). What a trusted source links later
merges the profiles as it would have, the refused events' attributes with them.

Everything here is pure: the caller loads, merges the states (`attributes.merge`),
applies the events and writes the result only if nothing it read has changed since
(`traitflow.store`), so two workers stitching at once cannot both win.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from attributes.identities import IdentityRules
from attributes.profile import ProfileState

Identity = tuple[str, str]


class Trust(StrEnum):
    """What a source's events may link (see the module's docstring)."""

    TRUSTED = "trusted"
    AUTHENTICATED = "authenticated"
    UNTRUSTED = "untrusted"


@dataclass(frozen=True, slots=True)
class SourceTrust:
    """Each source's trust level; a source not named has `default`."""

    levels: Mapping[str, Trust] = field(default_factory=dict)
    default: Trust = Trust.UNTRUSTED

    def of(self, source: str) -> Trust:
        return self.levels.get(source, self.default)


#: no source trusted: what a processor links unless it is given trust levels (the
#: worker's are the settings', `Settings.trust`, whose default is untrusted too), so
#: that a processor built without the settings is as safe as the worker
TRUST_NONE = SourceTrust()
#: every source trusted: only for a caller that says so (tests and benchmarks whose
#: events must link), never a default
TRUST_ALL = SourceTrust(default=Trust.TRUSTED)

#: `Refusal.kind`s: an identity limit; a trust level (identity of another profile, new)
LIMIT, MERGE, LINK = "limit", "merge", "link"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A link or merge not made: because of an identity limit (`kind` LIMIT), or
    because the event's source may not make it (MERGE: the identity belongs to
    another profile; LINK: it is new)."""

    profile: str
    #: the identity that was not linked, or whose profile was not merged
    identity: Identity
    reason: str
    kind: str = LIMIT
    #: the source of the event that asked for it (refusals by trust)
    source: str = ""


def anchored(
    rules: IdentityRules,
    identities: Sequence[Identity],
    trust: Trust,
    *,
    anonymous: Collection[str],
) -> list[Identity]:
    """An event's identities with the one it is applied to first: as they are (priority
    order) for a trusted source, and for an authenticated one's event that carries a
    primary identity; otherwise its anonymous id, when it has one, moved to the front.
    Everything that finds an event's profile by its first identity (the duplicate
    check, a conflict's parts, a backfill) then finds the one it was applied to."""
    ids = list(identities)
    if trust is Trust.TRUSTED or _vouched(rules, ids, trust, anonymous=anonymous):
        return ids
    for n, identity in enumerate(ids):
        if identity[0] in anonymous:
            return [identity, *ids[:n], *ids[n + 1 :]]
    return ids


def _vouched(
    rules: IdentityRules, ids: Sequence[Identity], trust: Trust, *, anonymous: Collection[str]
) -> bool:
    """Whether an authenticated source's event names its profile by a primary identity."""
    return (
        trust is Trust.AUTHENTICATED
        and bool(ids)
        and ids[0][0] == rules.primary
        and rules.primary not in anonymous
    )


@dataclass(slots=True)
class Plan:
    """What a batch does to the identity graph."""

    #: per event, the profile it is applied to (after every merge of the batch)
    profiles: list[str] = field(default_factory=list)
    #: (absorbed, survivor), in the order made; a survivor may be absorbed later
    merges: list[tuple[str, str]] = field(default_factory=list)
    #: profiles this batch creates
    created: list[str] = field(default_factory=list)
    #: final profile -> identities that must point at it after the batch (new links,
    #: and every identity of the profiles merged into it), in the order they came
    links: dict[str, list[Identity]] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)


class Stitcher:
    """Resolves one batch. `pointers` is the identity index as read (identity ->
    profile id), `profiles` the states of the profiles it names."""

    def __init__(
        self,
        rules: IdentityRules,
        pointers: Mapping[Identity, str],
        profiles: Mapping[str, ProfileState],
        *,
        anonymous: Collection[str] = ("anonymous_id",),
    ) -> None:
        self.rules = rules
        #: the identity types that make a profile anonymous (`TRAITFLOW_ANONYMOUS_TYPES`)
        self.anonymous = frozenset(anonymous)
        self.pointers = dict(pointers)
        self.profiles = profiles
        self.plan = Plan()
        self._into: dict[str, str] = {}  # absorbed -> survivor
        self._held: dict[str, dict[str, list[str]]] = {}  # profile -> its identities now
        self._seen: dict[str, float] = {}  # profile -> earliest event time given to it
        self._links: dict[str, list[Identity]] = {}

    def assign(
        self,
        identities: Sequence[Identity],
        previous: Sequence[Identity] = (),
        at: float = float("inf"),
        *,
        trust: Trust = Trust.TRUSTED,
        source: str = "",
    ) -> str:
        """The profile of an event carrying `identities` (priority order, at least
        one) and, for an alias, `previous` (its `previousId` as each type it may be);
        `at` is its event time (epoch ms); `trust` what its source, `source`, may link."""
        if trust is not Trust.TRUSTED:
            return self._assign_limited(identities, previous, at, trust=trust, source=source)
        first = identities[0]
        target = self._owner(first) or self._create(first)
        self._seen[target] = min(self._first_seen(target), at)
        for identity in [*identities[1:], *self._previous(previous)]:
            owner = self._owner(identity)
            if owner is None:
                self._link(target, identity)
            elif owner != target:
                target = self._merge(target, owner, identity)
        self.plan.profiles.append(target)
        return target

    def _assign_limited(
        self,
        identities: Sequence[Identity],
        previous: Sequence[Identity],
        at: float,
        *,
        trust: Trust,
        source: str,
    ) -> str:
        """`assign` for a source that is not trusted (the module's docstring)."""
        ids = anchored(self.rules, identities, trust, anonymous=self.anonymous)
        vouched = _vouched(self.rules, ids, trust, anonymous=self.anonymous)
        target = self._owner(ids[0]) or self._create(ids[0])
        self._seen[target] = min(self._first_seen(target), at)
        for identity in [*ids[1:], *self._previous(previous)]:
            owner = self._owner(identity)
            if owner == target or (owner is not None and not self.rules.spec.stitching):
                continue  # nothing to link; or a merge a trusted source would not make
            if vouched and identity[0] in self.anonymous:
                if owner is None:
                    self._link(target, identity)
                    continue
                if not self._known(owner):
                    target = self._merge(target, owner, identity)
                    continue
            kind = LINK if owner is None else MERGE
            what = "link" if owner is None else f"merge {owner} into"
            self.plan.refusals.append(
                Refusal(
                    target,
                    identity,
                    f"{trust} source {source!r} may not {what} {target}",
                    kind,
                    source,
                )
            )
        self.plan.profiles.append(target)
        return target

    def _known(self, profile: str) -> bool:
        """Whether the profile holds an identity of a type that is not anonymous."""
        held = self._held_by(profile)
        return any(values and kind not in self.anonymous for kind, values in held.items())

    def finish(self) -> Plan:
        """The plan, with every event's profile and every link under its survivor."""
        plan = self.plan
        plan.profiles = [self._find(profile) for profile in plan.profiles]
        for profile, links in self._links.items():
            plan.links.setdefault(self._find(profile), []).extend(links)
        return plan

    def _previous(self, candidates: Sequence[Identity]) -> list[Identity]:
        for candidate in candidates:
            if self._owner(candidate) is not None:
                return [candidate]
        return list(candidates[-1:])

    def _find(self, profile: str) -> str:
        while profile in self._into:
            profile = self._into[profile]
        return profile

    def _owner(self, identity: Identity) -> str | None:
        profile = self.pointers.get(identity)
        return None if profile is None else self._find(profile)

    def _held_by(self, profile: str) -> dict[str, list[str]]:
        held = self._held.get(profile)
        if held is None:
            state = self.profiles.get(profile)
            source = state.identities if state is not None else {}
            held = self._held[profile] = {kind: list(values) for kind, values in source.items()}
        return held

    def _create(self, identity: Identity) -> str:
        """A profile for a new identity. A stored profile that already has the id
        (its identities lost from the index) is taken over rather than overwritten;
        the caller loads those (`candidate_ids`)."""
        profile = self.rules.profile_id(*identity)
        if profile not in self.profiles:
            self.plan.created.append(profile)
            self._held[profile] = {}
        self._link(profile, identity)
        return profile

    def _link(self, profile: str, identity: Identity) -> None:
        kind, value = identity
        values = self._held_by(profile).setdefault(kind, [])
        limit = self.rules.limits.get(kind)
        if value in values:  # a stored profile taken over already holds it
            self.pointers[identity] = profile
            self._links.setdefault(profile, []).append(identity)
            return
        if limit is not None and len(values) >= limit:
            self.plan.refusals.append(
                Refusal(profile, identity, f"{kind} limit {limit} reached: not linked")
            )
            return
        values.append(value)
        self.pointers[identity] = profile
        self._links.setdefault(profile, []).append(identity)

    def _merge(self, target: str, other: str, identity: Identity) -> str:
        """Merge `other` (the profile `identity` points to) with `target`; return the
        survivor, or `target` when the merge is refused."""
        if not self.rules.spec.stitching:
            return target
        mine, theirs = self._held_by(target), self._held_by(other)
        for kind, values in theirs.items():
            limit = self.rules.limits.get(kind)
            union = len(set(mine.get(kind, ())) | set(values))
            if limit is not None and union > limit:
                self.plan.refusals.append(
                    Refusal(target, identity, f"merging {other} would exceed the {kind} limit")
                )
                return target
        survivor, absorbed = sorted((target, other), key=self._seniority)
        into, gone = self._held_by(survivor), self._held_by(absorbed)
        moved: list[Identity] = []
        for kind, values in gone.items():
            have = into.setdefault(kind, [])
            for value in values:
                if value not in have:
                    have.append(value)
                moved.append((kind, value))
                self.pointers[(kind, value)] = survivor
        self._into[absorbed] = survivor
        self._seen[survivor] = min(self._first_seen(survivor), self._first_seen(absorbed))
        self._links.setdefault(survivor, []).extend(moved)
        self.plan.merges.append((absorbed, survivor))
        return survivor

    def _first_seen(self, profile: str) -> float:
        seen = self._seen.get(profile)
        if seen is None:
            seen = float("inf")  # new, or nothing left of it: seen last
            state = self.profiles.get(profile)
            if state is not None and state.version and not state.deleted:
                seen = state.first_seen
            self._seen[profile] = seen
        return seen

    def _seniority(self, profile: str) -> tuple[int, float, str]:
        return (self.rules.id_rank(profile), self._first_seen(profile), profile)
