r"""The regular expressions of rules (CEL's `matches`), run by RE2: linear time, always.

A rule's pattern meets every event's strings, and an event is anyone's input. With a
backtracking engine (Python's `re`), `(a+)+$` takes exponential time on "aaaa…!": one
event of a few dozen characters would stall a worker for good. RE2 runs in time
linear in the text whatever the pattern, and it is also what CEL specifies for
`matches`. It has no backreferences or lookaround (the features that need
backtracking): a pattern using them is refused, with a hint, when it is compiled.

Semantics are RE2's defaults, as in CEL: UTF-8, `\d \w \s \b` ASCII, `\pL` and other
Unicode classes supported, `$` only at the end of the text, a match anywhere in the
text (`search`). The pattern is compiled once (a literal, at rule load) or per
distinct pattern (one computed at run time, cached).

Why `re2._re2`, the package's compiled binding, rather than `re2.compile(...).search`:
the public wrapper maps byte offsets back to characters for match objects, which
`matches` never needs, and that mapping was most of a search's cost (figures:
bench/README.md, "Design figures"). pyproject.toml pins the package's minor version
for it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import re2
from re2 import _re2

from attributes.errors import RuleError
from attributes.expressions.errors import EvaluationError


class InvalidPattern(RuleError):
    """A pattern RE2 cannot compile; the message says why."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error is reported to the rule's author instead
    options.never_capture = True  # only whether it matches is asked
    return options


_OPTIONS: Final = _options()
_UNANCHORED: Final = _re2.RE2.Anchor.UNANCHORED
_NO_MATCH: Final = (-1, -1)

_RE2_SYNTAX = "CEL patterns are RE2 syntax: https://github.com/google/re2/wiki/Syntax"
#: what RE2 says about a feature it lacks (a prefix of its error) -> what that is
_UNSUPPORTED = {
    "invalid perl operator: (?=": "lookahead is not supported",
    "invalid perl operator: (?!": "lookahead is not supported",
    "invalid perl operator: (?<=": "lookbehind is not supported",
    "invalid perl operator: (?<!": "lookbehind is not supported",
    "invalid perl operator: (?P": "backreferences are not supported",  # (?P=name)
    "invalid escape sequence: \\k": "backreferences are not supported",
    **{f"invalid escape sequence: \\{n}": "backreferences are not supported" for n in range(1, 10)},
    "invalid perl operator: (?>": "atomic groups are not supported",
    "bad repetition operator: ++": "possessive quantifiers are not supported",
    "bad repetition operator: *+": "possessive quantifiers are not supported",
    "bad repetition operator: ?+": "possessive quantifiers are not supported",
    "invalid escape sequence: \\Z": r"the end of the text is \z",
}


def _explain(error: str) -> str:
    hint = next((hint for prefix, hint in _UNSUPPORTED.items() if error.startswith(prefix)), None)
    return f"{error} ({hint}; {_RE2_SYNTAX})" if hint else error


class Pattern:
    """A compiled pattern; `search(text)` says whether it matches anywhere in `text`."""

    __slots__ = ("_regexp", "source")

    def __init__(self, source: str) -> None:
        try:
            encoded = source.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidPattern("the pattern is not valid Unicode (a lone surrogate)") from None
        regexp = _re2.RE2(encoded, _OPTIONS)
        if not regexp.ok():
            raise InvalidPattern(_explain(bytes(regexp.error()).decode("utf-8", "replace")))
        self.source = source
        self._regexp = regexp

    def search(self, text: str) -> bool:
        """Raises EvaluationError for text that is not valid Unicode (a lone surrogate,
        which decoded JSON and CEL literals never hold, but a Python caller might)."""
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:
            message = "matches: the text is not valid Unicode (a lone surrogate)"
            raise EvaluationError(message) from None
        spans = self._regexp.Match(_UNANCHORED, encoded, 0, len(encoded))
        return bool(spans[0] != _NO_MATCH)


@lru_cache(maxsize=32)
def cached_pattern(source: str) -> Pattern:
    """A pattern computed at run time, compiled once per distinct text: the few a rule
    meets stay compiled. Few are kept, as event data may make each one different
    (RE2 bounds each at about 8 MiB, its default `max_mem`)."""
    return Pattern(source)
