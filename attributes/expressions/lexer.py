"""Splits expression source into tokens, decoding number and string literals.

Follows the lexis of the CEL language definition: decimal and `0x` hexadecimal ints,
doubles with a fraction or exponent, quoted, triple-quoted and raw strings with CEL's
escape sequences, and `//` comments. uint (`1u`) and bytes (`b"..."`) literals are
recognised only to refuse them with a clear message: rule data is JSON, which has
neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto

from attributes.expressions.errors import ExpressionError, describe_position


class Kind(Enum):
    INT = auto()
    DOUBLE = auto()
    STRING = auto()
    IDENT = auto()  # names and the keywords true, false, null, in
    PUNCT = auto()
    END = auto()


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    text: str
    offset: int
    value: int | float | str | None = None


KEYWORDS = frozenset({"true", "false", "null", "in"})

#: Two-character operators first, so that `<=` is not read as `<` then `=`.
_PUNCTUATION = ("==", "!=", "<=", ">=", "&&", "||", *"<>!+-*/%?:.,[]{}()")

_TOKEN = re.compile(
    r"""
    (?P<space>[\t\n\f\r ]+|//[^\n]*)
    |(?P<double>(?:[0-9]*\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)[uU]?)
    |(?P<int>(?:0x[0-9a-fA-F]+|[0-9]+)[uU]?)
    |(?P<string>[rRbB]{0,2}(?:\"\"\"|'''|"|'))
    |(?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)
    |(?P<punct>"""
    + "|".join(re.escape(p) for p in _PUNCTUATION)
    + ")",
    re.VERBOSE,
)

#: The body of a string literal, by (raw, quote); the closing quote is not included.
_STRING_BODY = {
    (False, '"'): re.compile(r'((?:\\.|[^\\"\n\r])*)"'),
    (False, "'"): re.compile(r"((?:\\.|[^\\'\n\r])*)'"),
    (False, '"""'): re.compile(r'((?:\\.|[^\\])*?)"""', re.DOTALL),
    (False, "'''"): re.compile(r"((?:\\.|[^\\])*?)'''", re.DOTALL),
    (True, '"'): re.compile(r'([^"\n\r]*)"'),
    (True, "'"): re.compile(r"([^'\n\r]*)'"),
    (True, '"""'): re.compile(r'(.*?)"""', re.DOTALL),
    (True, "'''"): re.compile(r"(.*?)'''", re.DOTALL),
}

_ESCAPE = re.compile(
    r"""\\(?:
        (?P<char>[abfnrtv\\?"'`])
        |[xX](?P<hex>[0-9a-fA-F]{2})
        |u(?P<u4>[0-9a-fA-F]{4})
        |U(?P<u8>[0-9a-fA-F]{8})
        |(?P<octal>[0-3][0-7]{2})
        |(?P<invalid>.?)
    )""",
    re.VERBOSE | re.DOTALL,
)

_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def tokenize(source: str) -> list[Token]:
    """All tokens of `source`, ending with an END token; raises ExpressionError."""
    tokens: list[Token] = []
    offset = 0
    while offset < len(source):
        match = _TOKEN.match(source, offset)
        if match is None:
            where = describe_position(source, offset)
            raise ExpressionError(f"unexpected character {source[offset]!r} at {where}")
        kind = match.lastgroup
        if kind == "space":
            offset = match.end()
            continue
        if kind == "string":
            token = _string(source, offset, match.group())
        else:
            token = _simple_token(source, match, kind)
        tokens.append(token)
        offset = token.offset + len(token.text)
    tokens.append(Token(Kind.END, "", len(source)))
    return tokens


def _simple_token(source: str, match: re.Match[str], kind: str | None) -> Token:
    text, offset = match.group(), match.start()
    if kind in ("int", "double") and text[-1] in "uU":
        where = describe_position(source, offset)
        raise ExpressionError(f"uint literals are not supported ({text!r} at {where})")
    if kind == "double":
        return Token(Kind.DOUBLE, text, offset, float(text))
    if kind == "int":
        return Token(Kind.INT, text, offset, int(text, 16 if text.startswith("0x") else 10))
    if kind == "ident":
        return Token(Kind.IDENT, text, offset)
    return Token(Kind.PUNCT, text, offset)


def _string(source: str, offset: int, opening: str) -> Token:
    """The string literal starting at `offset`, whose prefix and opening quote are `opening`."""
    prefix = opening.rstrip("'\"").lower()
    quote = opening[len(prefix) :]
    where = describe_position(source, offset)
    if "b" in prefix:
        raise ExpressionError(f"bytes literals are not supported (at {where})")
    if prefix not in ("", "r"):
        raise ExpressionError(f"unexpected string prefix {prefix!r} at {where}")
    raw = prefix == "r"
    body_start = offset + len(opening)
    body = _STRING_BODY[raw, quote].match(source, body_start)
    if body is None:
        raise ExpressionError(f"unterminated string literal at {where}")
    text = source[offset : body.end()]
    value = body.group(1) if raw else _unescape(body.group(1), source, body_start)
    return Token(Kind.STRING, text, offset, value)


def _unescape(body: str, source: str, body_start: int) -> str:
    def decode(escape: re.Match[str]) -> str:
        where = describe_position(source, body_start + escape.start())
        if escape["invalid"] is not None:
            raise ExpressionError(f"invalid escape sequence '{escape.group()}' at {where}")
        if escape["char"] is not None:
            return _SIMPLE_ESCAPES.get(escape["char"], escape["char"])
        code_point = next(
            int(digits, 8 if name == "octal" else 16)
            for name in ("hex", "u4", "u8", "octal")
            if (digits := escape[name]) is not None
        )
        if 0xD800 <= code_point <= 0xDFFF or code_point > 0x10FFFF:
            raise ExpressionError(f"invalid code point '{escape.group()}' at {where}")
        return chr(code_point)

    return _ESCAPE.sub(decode, body)
