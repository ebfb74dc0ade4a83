"""The Redis key layout (`traitflow.key_layout`): the names the table lists."""

from __future__ import annotations

from traitflow.key_layout import KeyLayout


def test_key_layout() -> None:
    keys = KeyLayout("tf")
    assert keys.state("user", "u-1") == "tf:s:user:u-1"
    assert keys.view("user", "u-1") == "tf:v:user:u-1"
    assert keys.view("user", "u-1").startswith(keys.view_prefix("user"))
    assert keys.index("user", "anonymous_id", "a-1") == "tf:i:user:anonymous_id:a-1"
    assert keys.expiries("user", "events/3") == "tf:x:user:events/3"
