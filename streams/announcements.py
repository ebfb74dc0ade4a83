"""What a committed profile write announces to other systems (`Announcer`).

- **Audience changes** (issue 15): every enter and exit of an audience, as a Segment
  `track` (`Audience Entered` / `Audience Exited`) with the profile's identities, the
  audience, the time and the profile's version, keyed by profile id.
- **Profile changes**, when a topic is configured: the served view of every write,
  keyed by profile id, for a compacted topic that mirrors the profiles; a profile that
  is deleted or merged into another is a tombstone.

The messages ride on the write (`ProfileWrite.outgoing`) and are stored by its commit,
so they exist exactly when the write does (`traitflow.outbox`): a batch delivered again
changes nothing and announces nothing, and a crash after the commit loses nothing.
A message's `messageId` names the profile, its version and the change, so that a
consumer can drop the repeat a relay may send after a crash.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from attributes.events import iso_from_ms
from attributes.profile import ProfileState
from traitflow.store import Outgoing, ProfileWrite


class Announcer:
    """Adds to each write of `entity` the messages it announces, sent when it is
    committed: audience changes to `audience_topic`, views to `profile_topic` (None:
    not announced)."""

    def __init__(
        self, *, entity: str, audience_topic: str | None, profile_topic: str | None = None
    ) -> None:
        self.entity = entity
        self.audience_topic = audience_topic
        self.profile_topic = profile_topic

    @property
    def announces(self) -> bool:
        return self.audience_topic is not None or self.profile_topic is not None

    def announce(self, writes: Sequence[ProfileWrite], removed: Sequence[str], now: int) -> None:
        """Add the messages of `writes` (and the tombstones of the profiles `removed`,
        merged into one of them) to the writes, at processing time `now` (epoch ms)."""
        timestamp = iso_from_ms(now)  # one time for every message of the commit
        audiences, profiles = self.audience_topic, self.profile_topic
        for write in writes:
            state = write.state
            key = state.id.encode()
            outgoing = write.outgoing
            if audiences is not None:
                for name in write.entered:
                    change = self._change(state, name, "Audience Entered", "entered", timestamp)
                    outgoing.append(Outgoing(audiences, key, change))
                for name in write.exited:
                    change = self._change(state, name, "Audience Exited", "exited", timestamp)
                    outgoing.append(Outgoing(audiences, key, change))
            if profiles is not None:
                outgoing.append(Outgoing(profiles, key, write.view))
        if self.profile_topic is not None and removed and writes:
            # any write of the commit will do: its partition's owner sends them
            writes[0].outgoing += [
                Outgoing(self.profile_topic, pid.encode(), None) for pid in removed
            ]

    def _change(
        self, state: ProfileState, audience: str, event: str, verb: str, timestamp: str
    ) -> bytes:
        return orjson.dumps(
            {
                "type": "track",
                "event": event,
                "messageId": f"{self.entity}:{state.id}:{state.version}:{audience}:{verb}",
                "userId": state.id,
                "timestamp": timestamp,
                "properties": {
                    "audience": audience,
                    "entity": self.entity,
                    "profile_id": state.id,
                    "version": state.version,
                    "identities": state.identities,
                },
            }
        )
