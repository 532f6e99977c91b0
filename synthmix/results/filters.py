"""The ``--where`` language: a small, safe filter over results columns.

    architecture=unet            real_fraction<=0.5          synthetic in 0,0.5
    architecture != unet         synthetic not in 0          (a=1 or b=2) and not c=x

Text is tokenised and parsed into a tree (``Compare``, ``And``, ``Or``, ``Not``) whose values are
applied to the table as parameters. Nothing is evaluated as Python: ``DataFrame.query``/``eval``
would resolve attribute access and method calls in the text, so it is not a sandbox.
Written by hand because the grammar is ten lines and no small well-kept library does this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

import numpy as np
import pandas as pd

from synthmix.results.store import ResultsError

OPERATORS = ("=", "==", "!=", "<", "<=", ">", ">=", "in", "not in")
KEYWORDS = ("and", "or", "not", "in")

_TOKEN = re.compile(
    r"\s*(?:(?P<quoted>'[^']*'|\"[^\"]*\")|(?P<op><=|>=|==|!=|=|<|>)|(?P<punct>[(),])"
    r"|(?P<word>[^\s(),=<>!'\"]+))"
)


class FilterError(ResultsError):
    """A ``--where`` expression that does not parse or does not fit the table."""


@dataclass(frozen=True)
class Compare:
    column: str
    op: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class And:
    parts: tuple["Node", ...]


@dataclass(frozen=True)
class Or:
    parts: tuple["Node", ...]


@dataclass(frozen=True)
class Not:
    part: "Node"


Node = Union[Compare, And, Or, Not]


@dataclass(frozen=True)
class _Token:
    kind: str  # quoted | op | punct | word | keyword
    text: str


def parse_where(text: str) -> Node:
    """Parse one ``--where`` expression into a tree; raises FilterError naming the problem."""
    parser = _Parser(text, _tokenise(text))
    node = parser.expression()
    if not parser.done():
        parser.fail(f"unexpected {parser.peek().text!r}")
    return node


def apply_filters(table: pd.DataFrame, expressions: list[str]) -> pd.DataFrame:
    """Rows of ``table`` matching every expression (they are ANDed)."""
    keep = np.ones(len(table), dtype=bool)
    for text in expressions:
        keep &= evaluate(parse_where(text), table, text)
    return table.loc[keep]


def evaluate(node: Node, table: pd.DataFrame, text: str = "") -> np.ndarray:
    """Boolean mask of the rows for which ``node`` holds."""
    if isinstance(node, And):
        return np.logical_and.reduce([evaluate(p, table, text) for p in node.parts])
    if isinstance(node, Or):
        return np.logical_or.reduce([evaluate(p, table, text) for p in node.parts])
    if isinstance(node, Not):
        return ~evaluate(node.part, table, text)
    return _compare(node, table, text)


def _tokenise(text: str) -> list[_Token]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise FilterError(f"--where {text!r}: cannot read {text[pos:].strip()!r}")
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "quoted":
            value = value[1:-1]
        elif kind == "word" and value.lower() in KEYWORDS:
            kind, value = "keyword", value.lower()
        tokens.append(_Token(kind, value))
        pos = match.end()
    return tokens


class _Parser:
    """Recursive descent: or > and > not/parentheses > comparison."""

    def __init__(self, text: str, tokens: list[_Token]):
        self.text, self.tokens, self.pos = text, tokens, 0

    def fail(self, why: str) -> None:
        raise FilterError(f"--where {self.text!r}: {why}; expected e.g. 'architecture=unet', "
                          "'real_fraction<=0.5' or 'synthetic in 0,0.5'")

    def done(self) -> bool:
        return self.pos >= len(self.tokens)

    def peek(self) -> _Token:
        if self.done():
            self.fail("expression ends too early")
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.peek()
        self.pos += 1
        return token

    def accept(self, kind: str, text: str) -> bool:
        if not self.done() and self.tokens[self.pos].kind == kind and self.tokens[self.pos].text == text:
            self.pos += 1
            return True
        return False

    def expression(self) -> Node:
        parts = [self.conjunction()]
        while self.accept("keyword", "or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def conjunction(self) -> Node:
        parts = [self.unary()]
        while self.accept("keyword", "and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self) -> Node:
        if self.accept("keyword", "not"):
            return Not(self.unary())
        if self.accept("punct", "("):
            node = self.expression()
            if not self.accept("punct", ")"):
                self.fail("missing ')'")
            return node
        return self.comparison()

    def comparison(self) -> Compare:
        name = self.take()
        if name.kind not in ("word", "quoted"):
            self.fail(f"expected a column name, got {name.text!r}")
        op = self.operator()
        values = [self.value()]
        if op in ("in", "not in"):
            while self.accept("punct", ","):
                values.append(self.value())
        return Compare(name.text, op, tuple(values))

    def operator(self) -> str:
        token = self.take()
        if token.kind == "op":
            return "=" if token.text == "==" else token.text
        if token.kind == "keyword" and token.text == "in":
            return "in"
        if token.kind == "keyword" and token.text == "not" and self.accept("keyword", "in"):
            return "not in"
        self.fail(f"expected one of {', '.join(OPERATORS)} after the column name, got {token.text!r}")
        raise AssertionError  # unreachable: fail raises

    def value(self) -> str:
        token = self.take()
        if token.kind not in ("word", "quoted"):
            self.fail(f"expected a value, got {token.text!r}")
        return token.text


def _compare(node: Compare, table: pd.DataFrame, text: str) -> np.ndarray:
    if node.column not in table.columns:
        known = ", ".join(map(str, table.columns))
        raise FilterError(f"--where {text!r}: no column {node.column!r}; columns: {known}")
    column = table[node.column]
    if pd.api.types.is_bool_dtype(column):
        values = [_as_bool(v, node, text) for v in node.values]
        data = column.to_numpy()
        equal = np.isin(data, values)
    elif pd.api.types.is_numeric_dtype(column):
        values = [_as_number(v, node, text) for v in node.values]
        data = column.to_numpy(dtype=float, na_value=np.nan)
        if node.op in ("<", "<=", ">", ">="):
            return _order(data, node.op, values[0])
        equal = np.logical_or.reduce([np.isclose(data, v, rtol=1e-9, atol=1e-12) for v in values])
    else:
        if node.op in ("<", "<=", ">", ">="):
            raise FilterError(f"--where {text!r}: {node.column} is not numeric, so {node.op!r} "
                              "does not apply; use = or in")
        data = column.astype("string").to_numpy(dtype=object, na_value=None)
        equal = np.isin(data, list(node.values))
    return ~equal if node.op in ("!=", "not in") else equal


def _order(data: np.ndarray, op: str, value: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return {"<": data < value, "<=": data <= value, ">": data > value, ">=": data >= value}[op]


def _as_number(value: str, node: Compare, text: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FilterError(f"--where {text!r}: {node.column} is numeric; {value!r} is not a number") from None


def _as_bool(value: str, node: Compare, text: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise FilterError(f"--where {text!r}: {node.column} is true/false; {value!r} is neither")
