"""A string that matches a regular expression: for JSON schema ``pattern`` keywords.

Covers the patterns schemas use in practice: literals and escapes, ``.``, ``\\d \\w \\s`` (and
their negations), character classes with ranges and negation, groups (plain, ``(?:…)``,
``(?P<name>…)``, ``(?<name>…)``), alternation, the quantifiers ``? * + {n} {n,} {n,m}`` (lazy
or not), and the anchors ``^ $ \\b \\B`` (which add nothing). Anything else (lookarounds,
backreferences, flags) makes ``sample`` give up and return ``None``.

The pattern is parsed once into a tree, then a string is written from it. Choices (which
branch, how many repeats, which character of a class) come from the ``random`` given, so a
seeded one makes the same string every time. Strings taking over ``MAX_CHARS`` repeats
(characters or groups), and patterns nested over ``MAX_NESTING`` groups deep, are given up on.
The result is checked with ``re.search`` (JSON schema patterns are not anchored): ``None`` if it
does not match.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field

MAX_CHARS = 4096
MAX_NESTING = 32
_MAX_EXTRA_REPEATS = 2
"""Repeats beyond a quantifier's minimum, at most (``*`` and ``+`` and ``{n,}`` included)."""
_PRINTABLE = string.ascii_letters + string.digits + "_-. "
_CLASS_ESCAPES = {
    "d": string.digits,
    "w": string.ascii_letters + string.digits + "_",
    "s": " ",
    "D": string.ascii_letters + "_-",
    "W": "-. ",
    "S": string.ascii_letters + string.digits,
}
_LITERAL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_ANCHOR_ESCAPES = frozenset("bBAzZ")
_COUNTED = re.compile(r"\{(\d+)(,(\d*))?\}")


class _Unsupported(Exception):
    """The pattern uses syntax the sampler does not cover, or makes too long a string."""


@dataclass(frozen=True, slots=True)
class _Repeat:
    """A character from ``chars``, or a string of ``group``, ``low`` to ``high`` times."""

    chars: str = ""
    group: _Branches | None = None
    low: int = 1
    high: int = 1


@dataclass(slots=True)
class _Branches:
    """Alternatives (``a|b``), each a sequence of repeats."""

    branches: list[list[_Repeat]] = field(default_factory=list)


@dataclass(slots=True)
class _Parser:
    """A recursive-descent parse of the pattern into ``_Branches``."""

    pattern: str
    at: int = 0
    depth: int = 0

    def _peek(self) -> str:
        return self.pattern[self.at] if self.at < len(self.pattern) else ""

    def _take(self) -> str:
        char = self._peek()
        if not char:
            raise _Unsupported("unexpected end")
        self.at += 1
        return char

    def branches(self) -> _Branches:
        """Alternatives separated by ``|``, up to a ``)`` or the end."""
        found = _Branches([self._sequence()])
        while self._peek() == "|":
            self.at += 1
            found.branches.append(self._sequence())
        return found

    def _sequence(self) -> list[_Repeat]:
        items: list[_Repeat] = []
        while self._peek() not in ("", "|", ")"):
            atom = self._atom()
            if atom is not None:
                items.append(self._quantified(atom))
        return items

    def _quantified(self, atom: _Repeat) -> _Repeat:
        char = self._peek()
        counted = _COUNTED.match(self.pattern, self.at) if char == "{" else None
        if char == "?":
            low, high = 0, 1
        elif char == "*":
            low, high = 0, _MAX_EXTRA_REPEATS
        elif char == "+":
            low, high = 1, 1 + _MAX_EXTRA_REPEATS
        elif counted is not None:
            low = int(counted.group(1))
            upper = counted.group(3)
            high = int(upper) if upper else low + _MAX_EXTRA_REPEATS if counted.group(2) else low
            self.at = counted.end() - 1
        else:
            return atom
        self.at += 1
        if self._peek() in ("?", "+"):  # lazy or possessive: the same strings match
            self.at += 1
        if low > MAX_CHARS or high < low:
            raise _Unsupported("repeat count")
        return _Repeat(atom.chars, atom.group, low, min(high, low + _MAX_EXTRA_REPEATS))

    def _atom(self) -> _Repeat | None:
        char = self._take()
        if char in "^$":
            return None
        if char == ".":
            return _Repeat(chars=_PRINTABLE)
        if char == "[":
            return _Repeat(chars=self._class())
        if char == "(":
            return _Repeat(group=self._group())
        if char == "\\":
            escaped = self._take()
            if escaped in _ANCHOR_ESCAPES:
                return None
            if escaped in _CLASS_ESCAPES:
                return _Repeat(chars=_CLASS_ESCAPES[escaped])
            if escaped.isdigit():
                raise _Unsupported("backreference")
            return _Repeat(chars=_LITERAL_ESCAPES.get(escaped, escaped))
        if char in "*+?":
            raise _Unsupported("nothing to repeat")
        return _Repeat(chars=char)

    def _group(self) -> _Branches:
        if self._peek() == "?":
            self.at += 1
            kind = self._take()
            if (kind == "P" and self._peek() == "<") or (kind == "<" and self._peek() not in "=!"):
                self.at = self.pattern.index(">", self.at) + 1
            elif kind != ":":
                raise _Unsupported("lookaround or flags")
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _Unsupported("groups nested too deep")
        inner = self.branches()
        self.depth -= 1
        if self._take() != ")":
            raise _Unsupported("unclosed group")
        return inner

    def _class(self) -> str:
        negated = self._peek() == "^"
        if negated:
            self.at += 1
        members: list[str] = []
        first = True
        while True:
            char = self._take()
            if char == "]" and not first:
                break
            first = False
            if char == "\\":
                escaped = self._take()
                members.append(
                    _CLASS_ESCAPES.get(escaped) or _LITERAL_ESCAPES.get(escaped, escaped)
                )
                continue
            if self._peek() == "-" and self.pattern[self.at + 1 : self.at + 2] not in ("]", ""):
                self.at += 1
                end = self._take()
                if end == "\\":
                    end = self._take()
                if ord(end) < ord(char):
                    raise _Unsupported("bad range")
                last = min(ord(end), ord(char) + 255)
                members.append("".join(chr(code) for code in range(ord(char), last + 1)))
                continue
            members.append(char)
        chars = "".join(members)
        if negated:
            chars = "".join(c for c in _PRINTABLE if c not in chars)
        if not chars:
            raise _Unsupported("empty class")
        return chars


@dataclass(slots=True)
class _Writer:
    """Writes a string of a parsed pattern, drawing choices from ``rng``."""

    rng: random.Random
    out: list[str] = field(default_factory=list)
    steps: int = 0
    """Repeats written so far, characters or groups (empty groups count too)."""

    def branches(self, node: _Branches) -> None:
        for item in self.rng.choice(node.branches):
            for _ in range(self.rng.randint(item.low, item.high)):
                self.steps += 1
                if self.steps > MAX_CHARS:
                    raise _Unsupported("too long a string")
                if item.group is not None:
                    self.branches(item.group)
                else:
                    self.out.append(self.rng.choice(item.chars))


def sample(pattern: str, rng: random.Random) -> str | None:
    """A string ``re.search(pattern, …)`` matches, or ``None`` if none could be made."""
    try:
        parser = _Parser(pattern)
        tree = parser.branches()
        if parser.at != len(pattern):
            return None
        writer = _Writer(rng)
        writer.branches(tree)
        text = "".join(writer.out)
        if re.search(pattern, text) is None:
            return None
    except (_Unsupported, re.error, ValueError, IndexError):
        return None
    return text
