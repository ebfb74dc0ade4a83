"""Recursive-descent parser for CEL's grammar (langdef.md, "Syntax").

One method per precedence level, loosest first: `?:`, `||`, `&&`, relations, `+ -`,
`* / %`, unary, member access, primary. A minus directly before a number literal is
part of the literal, as in CEL's own parsers, so `-9223372036854775808` is a valid
int although its magnitude alone is not.
"""

from __future__ import annotations

from collections.abc import Callable

from attributes.expressions.errors import ExpressionError, describe_position
from attributes.expressions.lexer import KEYWORDS, Kind, Token, tokenize
from attributes.expressions.nodes import (
    Binary,
    Call,
    Conditional,
    Ident,
    Index,
    ListLiteral,
    Literal,
    MapLiteral,
    Node,
    Select,
    Unary,
)

INT_MIN, INT_MAX = -(2**63), 2**63 - 1

#: Reserved by CEL for embedding languages: not usable as identifiers.
_RESERVED = frozenset(
    {
        *("as", "break", "const", "continue", "else", "for", "function", "if", "import"),
        *("let", "loop", "namespace", "package", "return", "var", "void", "while"),
    }
)

_RELATIONS = ("<", "<=", ">=", ">", "==", "!=", "in")


def parse(source: str) -> Node:
    """The syntax tree of `source`; raises ExpressionError on a syntax error."""
    return _Parser(source).parse()


class _Parser:
    def __init__(self, source: str) -> None:
        self._source = source
        self._tokens = tokenize(source)
        self._next = 0

    def parse(self) -> Node:
        node = self._conditional()
        if self._peek().kind is not Kind.END:
            raise self._unexpected(self._peek())
        return node

    def _conditional(self) -> Node:
        condition = self._or()
        question = self._peek()
        if not self._accept("?"):
            return condition
        if_true = self._or()
        self._expect(":")
        return Conditional(condition, if_true, self._conditional(), question.offset)

    def _or(self) -> Node:
        return self._binary(("||",), self._and)

    def _and(self) -> Node:
        return self._binary(("&&",), self._relation)

    def _relation(self) -> Node:
        return self._binary(_RELATIONS, self._addition)

    def _addition(self) -> Node:
        return self._binary(("+", "-"), self._multiplication)

    def _multiplication(self) -> Node:
        return self._binary(("*", "/", "%"), self._unary)

    def _binary(self, operators: tuple[str, ...], operand: Callable[[], Node]) -> Node:
        """A left-associative chain of `operators` between operands."""
        left = operand()
        while self._peek().text in operators:
            token = self._advance()
            left = Binary(token.text, left, operand(), token.offset)
        return left

    def _unary(self) -> Node:
        token = self._peek()
        if token.text == "-" and self._peek(1).kind in (Kind.INT, Kind.DOUBLE):
            self._advance()
            return self._member(self._number(self._advance(), negative=True, offset=token.offset))
        if token.text in ("!", "-"):
            self._advance()
            return Unary(token.text, self._unary(), token.offset)
        return self._member(self._primary())

    def _member(self, node: Node) -> Node:
        while True:
            token = self._peek()
            if self._accept("."):
                name = self._selector()
                if self._accept("("):
                    node = Call(name.text, node, self._expressions(")"), name.offset)
                else:
                    self._refuse_message_construction()
                    node = Select(node, name.text, name.offset)
            elif self._accept("["):
                index = self._conditional()
                self._expect("]")
                node = Index(node, index, token.offset)
            else:
                return node

    def _primary(self) -> Node:
        token = self._advance()
        if token.kind in (Kind.INT, Kind.DOUBLE):
            return self._number(token, negative=False, offset=token.offset)
        if token.kind is Kind.STRING:
            return Literal(token.value, token.offset)
        if token.kind is Kind.IDENT:
            return self._identifier(token)
        if token.text == "(":
            node = self._conditional()
            self._expect(")")
            return node
        if token.text == "[":
            return ListLiteral(self._expressions("]"), token.offset)
        if token.text == "{":
            return MapLiteral(self._map_entries(), token.offset)
        if token.text == ".":
            raise self._error("names starting with '.' are not supported", token)
        raise self._unexpected(token)

    def _identifier(self, token: Token) -> Node:
        constants = {"true": True, "false": False, "null": None}
        if token.text in constants:
            return Literal(constants[token.text], token.offset)
        if token.text in KEYWORDS:
            raise self._unexpected(token)
        if token.text in _RESERVED:
            raise self._error(f"'{token.text}' is a reserved word", token)
        if self._accept("("):
            return Call(token.text, None, self._expressions(")"), token.offset)
        self._refuse_message_construction()
        return Ident(token.text, token.offset)

    def _selector(self) -> Token:
        token = self._advance()
        if token.kind is not Kind.IDENT or token.text in KEYWORDS:
            raise self._unexpected(token)
        return token

    def _refuse_message_construction(self) -> None:
        if self._peek().text == "{":
            message = "protobuf message construction (Name{...}) is not supported"
            raise self._error(message, self._peek())

    def _expressions(self, closing: str) -> tuple[Node, ...]:
        """Comma-separated expressions up to `closing` (a trailing comma is allowed)."""
        items: list[Node] = []
        while self._peek().text != closing:
            items.append(self._conditional())
            if not self._accept(","):
                break
        self._expect(closing)
        return tuple(items)

    def _map_entries(self) -> tuple[tuple[Node, Node], ...]:
        entries: list[tuple[Node, Node]] = []
        while self._peek().text != "}":
            key = self._conditional()
            self._expect(":")
            entries.append((key, self._conditional()))
            if not self._accept(","):
                break
        self._expect("}")
        return tuple(entries)

    def _number(self, token: Token, *, negative: bool, offset: int) -> Literal:
        assert isinstance(token.value, int | float)
        value = -token.value if negative else token.value
        if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
            sign = "-" if negative else ""
            raise self._error(f"int literal {sign}{token.text} is out of range", token)
        return Literal(value, offset)

    def _peek(self, ahead: int = 0) -> Token:
        """The next token (or the one after); the END token stays last, however far."""
        index = self._next + ahead
        return self._tokens[index] if index < len(self._tokens) else self._tokens[-1]

    def _advance(self) -> Token:
        token = self._tokens[self._next]
        if token.kind is not Kind.END:
            self._next += 1
        return token

    def _accept(self, text: str) -> bool:
        if self._peek().text != text:
            return False
        self._advance()
        return True

    def _expect(self, text: str) -> None:
        token = self._peek()
        if not self._accept(text):
            raise self._error(f"expected '{text}' but found {_describe(token)}", token)

    def _unexpected(self, token: Token) -> ExpressionError:
        return self._error(f"unexpected {_describe(token)}", token)

    def _error(self, message: str, token: Token) -> ExpressionError:
        return ExpressionError(f"{message} at {describe_position(self._source, token.offset)}")


def _describe(token: Token) -> str:
    if token.kind is Kind.END:
        return "end of input"
    return f"'{token.text}'"
