"""The Redis key layout (`traitflow.key_layout`): the names, and the table that lists
them all."""

from __future__ import annotations

import inspect
import re

from traitflow import key_layout
from traitflow.key_layout import KeyLayout


def test_key_layout() -> None:
    keys = KeyLayout("tf")
    assert keys.state("user", "u-1") == "tf:s:user:u-1"
    assert keys.view("user", "u-1") == "tf:v:user:u-1"
    assert keys.view("user", "u-1").startswith(keys.view_prefix("user"))
    assert keys.index("user", "anonymous_id", "a-1") == "tf:i:user:anonymous_id:a-1"
    assert keys.expiries("user", "events/3") == "tf:x:user:events/3"


def _table_rows() -> list[re.Pattern[str]]:
    """The key column of the module docstring's table, as patterns ({...}: one part)."""
    doc = key_layout.__doc__ or ""
    keys = re.findall(r"^    (tf:\S+)\s+(?:string|set|zset|hash|stream)\b", doc, re.MULTILINE)
    return [re.compile(re.sub(r"\\\{[^}]*\\\}", "[^:]+", re.escape(key))) for key in keys]


#: what a parameter stands for, where a placeholder part will not do
PLACEHOLDERS: dict[str, object] = {
    "entity": "user",
    "partition": "topic/0",
    "source": "topic/0",
    "bucket": 3,
}


def _named_keys() -> dict[str, str]:
    """Every whole key `KeyLayout` names (not its prefixes nor its SCAN pattern), made
    with placeholder arguments."""
    keys = KeyLayout("tf")
    named = {}
    for name in dir(KeyLayout):
        if name.startswith("_") or name == "prefix":
            continue
        value = getattr(keys, name)
        if callable(value):
            arguments = [PLACEHOLDERS.get(p, "x") for p in inspect.signature(value).parameters]
            value = value(*arguments)
        if not value.endswith((":", "*")):
            named[name] = value
    return named


def test_the_table_lists_every_key_the_layout_names() -> None:
    rows = _table_rows()
    assert len(rows) > 30, "the table was not found"
    unlisted = {
        name: key
        for name, key in _named_keys().items()
        if not any(row.fullmatch(key) for row in rows)
    }
    assert unlisted == {}, "add these keys to the table in traitflow/key_layout.py"
