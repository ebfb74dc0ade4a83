"""The syntax tree the parser builds and the compiler walks once.

Nodes are immutable and carry the offset of their token in the source, so compile
errors can say where. Macros (`has`, `all`, `map`, ...) are plain `Call`s here; the
compiler recognises them, as they need their arguments unevaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

LiteralValue = bool | int | float | str | None


@dataclass(frozen=True, slots=True)
class Literal:
    value: LiteralValue
    offset: int


@dataclass(frozen=True, slots=True)
class Ident:
    name: str
    offset: int


@dataclass(frozen=True, slots=True)
class Select:
    """`operand.field`."""

    operand: Node
    field: str
    offset: int


@dataclass(frozen=True, slots=True)
class Index:
    """`operand[index]`."""

    operand: Node
    index: Node
    offset: int


@dataclass(frozen=True, slots=True)
class Call:
    """`function(args)`, or `target.function(args)` in receiver style."""

    function: str
    target: Node | None
    args: tuple[Node, ...]
    offset: int


@dataclass(frozen=True, slots=True)
class ListLiteral:
    items: tuple[Node, ...]
    offset: int


@dataclass(frozen=True, slots=True)
class MapLiteral:
    entries: tuple[tuple[Node, Node], ...]
    offset: int


@dataclass(frozen=True, slots=True)
class Unary:
    """`!operand` or `-operand`."""

    operator: str
    operand: Node
    offset: int


@dataclass(frozen=True, slots=True)
class Binary:
    """`left operator right`, for arithmetic, relations, `in`, `&&` and `||`."""

    operator: str
    left: Node
    right: Node
    offset: int


@dataclass(frozen=True, slots=True)
class Conditional:
    """`condition ? if_true : if_false`."""

    condition: Node
    if_true: Node
    if_false: Node
    offset: int


Node = (
    Literal
    | Ident
    | Select
    | Index
    | Call
    | ListLiteral
    | MapLiteral
    | Unary
    | Binary
    | Conditional
)
