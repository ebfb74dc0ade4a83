"""The write of a changed profile: its state, its served view, when to look again
(`ViewRenderer`).

A store that keeps states (`traitflow.state_cache.CachedProfileStore`) hands back the
same state object a batch later. The renderer remembers, per profile, that object and
the attribute values it last rendered from it, so that only the attributes an event
touched are computed again, and only the audiences that read one of them (or the
traits, when they changed) are evaluated again (`attributes.reevaluation`).
What is remembered counts for that very object only (an identity check): a state
loaded afresh is rendered in full, and one changed outside `apply_event` (a merge)
must be `forget`-ten first.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from attributes.clock import DEFAULT_REFRESH_MS, next_render, now_value
from attributes.policies import MergePolicy
from attributes.profile import (
    ProfileState,
    encode_state,
    expire_windows,
    reconcile,
    render_view,
)
from attributes.records import RecordMapping, mapped_record
from attributes.reevaluation import Evaluated, Reevaluation
from attributes.ruleset import RuleSet
from traitflow.store import ProfileWrite, record_value

log = logging.getLogger(__name__)

#: Views are JSON; msgspec (unlike orjson) also writes integers past 64 bits.
encode_view = msgspec.json.Encoder().encode


class ViewRenderer:
    """Renders one entity's changed states under `rules` and `policy`, remembering the
    last render of up to `remembered` profiles. `records`: the entity's collections
    with a field mapping, whose record documents each write carries."""

    def __init__(
        self,
        *,
        rules: RuleSet,
        policy: MergePolicy,
        remembered: int = 100_000,
        records: Mapping[str, RecordMapping] | None = None,
        rules_version: int = 0,
        time_refresh_ms: int = DEFAULT_REFRESH_MS,
    ) -> None:
        self.rules = rules
        #: how soon a profile whose rules read `now` is rendered again (`attributes.clock`)
        self.time_refresh_ms = time_refresh_ms
        self.policy = policy
        self.records = dict(records or {})
        self._remembered = remembered
        #: served with each view (`rules_version`) unless 0: the rule file alone
        self.rules_version = rules_version
        #: profile -> (the state object, its attribute values when last rendered, the
        #: membership evaluated from them)
        self._renders: OrderedDict[str, tuple[ProfileState, dict[str, Any], Evaluated | None]] = (
            OrderedDict()
        )
        self._audiences = Reevaluation(
            rules.membership,
            (attribute.name for attribute in rules.attributes),
            {derived.name: derived.expression.names for derived in rules.derived},
        )

    def switched(self, rules: RuleSet, rules_version: int) -> ViewRenderer:
        """A renderer like this one for other rules: it remembers no render (each was
        made under the old rules)."""
        return ViewRenderer(
            rules=rules,
            policy=self.policy,
            remembered=self._remembered,
            records=self.records,
            rules_version=rules_version,
            time_refresh_ms=self.time_refresh_ms,
        )

    def clear(self) -> None:
        """Forget every render (the states they were made from left the store's cache)."""
        self._renders.clear()

    def forget(self, profiles: Iterable[str]) -> None:
        """Forget the renders of `profiles`: their states changed outside `apply_event`,
        or will not be kept."""
        for pid in profiles:
            self._renders.pop(pid, None)

    def fit(self, state: ProfileState) -> None:
        """Make a loaded state fit the rules (`reconcile`), unless it was rendered here
        last: then it fits already, and the check is skipped."""
        remembered = self._renders.get(state.id)
        if remembered is not None and remembered[0] is state:
            return
        if reset := reconcile(state, self.rules):
            # an older generation's (a recomputation's: `attributes.recomputation`) is
            # no change of rules, and every profile drops one once: not worth a line
            kept = {key.partition("^")[0] for key in self.rules.state_keys}
            if changed := [key for key in reset if key.partition("^")[0] not in kept]:
                log.info(
                    "profile %s: states of changed rules reset: %s", state.id, ", ".join(changed)
                )

    def write(
        self, state: ProfileState, source: str, *, touched: set[str], now: int
    ) -> ProfileWrite:
        """The write of a changed state: its view as of `now`, and when to look again.
        `touched`: the attributes changed since the state was loaded. A deleted
        profile has no view (reads answer 404) and nothing to expire. A profile whose
        rules read `now` is looked at again `time_refresh_ms` later at the latest."""
        rules = self.rules
        expiry: tuple[str, int | None] | None = None  # not indexed without windows
        if state.deleted:
            self._renders.pop(state.id, None)
            if rules.windowed or rules.reads_now:
                expiry = (source, None)
            left, state.audiences = state.audiences, []  # without a view, in none
            write = ProfileWrite(state, encode_state(state), None, expiry=expiry, source=source)
            write.exited = left
            write.records = dict.fromkeys(self.records)
            return write
        if rules.windowed:
            expiry = (source, expire_windows(state, rules, now, touched=touched))
        if rules.reads_now:
            windows_due = expiry[1] if expiry is not None else None
            expiry = (source, next_render(now, windows_due, self.time_refresh_ms))
        remembered = self._renders.pop(state.id, None)
        previous = last = None
        if remembered is not None and remembered[0] is state:
            _, previous, last = remembered
        rendered = render_view(
            state, rules, now, previous=previous, touched=touched, policy=self.policy
        )
        if self.rules_version:
            rendered["rules_version"] = self.rules_version
        evaluated = None
        entered: list[str] = []
        exited: list[str] = []
        if rules.audiences or state.audiences:
            # once per write, from what the view serves: the view and the state that
            # remembers the membership are committed together
            evaluated = self._audiences.evaluate(
                rendered["attributes"],
                rendered["traits"],
                state.audiences,
                last=last,
                touched=touched,
                now=now_value(now) if rules.reads_now else None,
            )
            if rules.audiences:
                rendered["_audiences"] = evaluated.members
            entered, exited = evaluated.entered, evaluated.exited
            state.audiences = evaluated.joined
        self._renders[state.id] = (state, rendered["attributes"], evaluated)
        if len(self._renders) > self._remembered:
            self._renders.popitem(last=False)
        write = ProfileWrite(
            state, encode_state(state), encode_view(rendered), expiry=expiry, source=source
        )
        write.entered, write.exited = entered, exited
        for collection, mapping in self.records.items():  # from the view, as committed
            record = encode_view(mapped_record(rendered, mapping))
            write.records[collection] = record_value(mapping.stamp, state.version, record)
        return write
