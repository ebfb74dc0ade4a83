"""`Announcer`: the messages a profile write carries to its commit."""

from __future__ import annotations

import orjson

from attributes.profile import ProfileState, encode_state
from streams.announcements import Announcer
from traitflow.store import Outgoing, ProfileWrite

NOW = 946_684_800_000  # 2000-01-01T00:00:00Z


def written(
    pid: str,
    view: bytes | None = b'{"v":1}',
    *,
    entered: tuple[str, ...] = (),
    exited: tuple[str, ...] = (),
) -> ProfileWrite:
    state = ProfileState(id=pid, version=7, identities={"user_id": [pid]})
    write = ProfileWrite(state, encode_state(state), view, source="events/0")
    write.entered, write.exited = list(entered), list(exited)
    return write


def test_enters_and_exits_are_segment_tracks_keyed_by_profile() -> None:
    write = written("u-1", entered=("vip",), exited=("new",))
    Announcer(entity="user", audience_topic="aud").announce([write], (), NOW)
    assert [(m.topic, m.key) for m in write.outgoing] == [("aud", b"u-1"), ("aud", b"u-1")]
    enter, leave = (orjson.loads(m.value or b"") for m in write.outgoing)
    assert enter == {
        "type": "track",
        "event": "Audience Entered",
        "messageId": "user:u-1:7:vip:entered",
        "userId": "u-1",
        "timestamp": "2000-01-01T00:00:00.000Z",
        "properties": {
            "audience": "vip",
            "entity": "user",
            "profile_id": "u-1",
            "version": 7,
            "identities": {"user_id": ["u-1"]},
        },
    }
    assert (leave["event"], leave["messageId"]) == ("Audience Exited", "user:u-1:7:new:exited")


def test_the_same_write_announced_again_has_the_same_ids() -> None:
    """What lets a consumer drop the repeat a relay sends after a crash."""
    first, second = written("u-1", entered=("vip",)), written("u-1", entered=("vip",))
    announcer = Announcer(entity="user", audience_topic="aud")
    announcer.announce([first], (), NOW)
    announcer.announce([second], (), NOW + 5)
    ids = [orjson.loads(w.outgoing[0].value or b"")["messageId"] for w in (first, second)]
    assert ids[0] == ids[1]


def test_the_change_stream_carries_views_and_tombstones() -> None:
    kept, deleted = written("u-1"), written("u-2", view=None)
    Announcer(entity="user", audience_topic=None, profile_topic="profiles").announce(
        [kept, deleted], ["u-9"], NOW
    )
    assert kept.outgoing == [
        Outgoing("profiles", b"u-1", b'{"v":1}'),
        Outgoing("profiles", b"u-9", None),  # merged into another profile
    ]
    assert deleted.outgoing == [Outgoing("profiles", b"u-2", None)]


def test_nothing_is_announced_without_topics_or_changes() -> None:
    quiet = Announcer(entity="user", audience_topic=None)
    assert not quiet.announces
    write = written("u-1")
    Announcer(entity="user", audience_topic="aud").announce([write], (), NOW)
    assert write.outgoing == []  # no audience entered or left
