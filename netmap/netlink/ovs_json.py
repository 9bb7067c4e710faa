"""A JSON-RPC message parser for the `ovs` package's IDL on the standard library's C JSON.

The `ovs` package parses every OVSDB message with its C parser (ovs._json) when it was built
against libopenvswitch, as Debian's python3-openvswitch is; built from PyPI's sdist without
it, the package falls back to a lexer in pure Python that reads one character per call.
That fallback was most of a realize's time: for 100 guests, 1.7 s of 3 s in it (the
replica of their ports, the transaction's reply, ovs-vswitchd's updates).

`FramingParser` keeps ovs.json.Parser's interface (feed returns the characters it used,
is_done, finish returns the value or an error string) but only finds where one message
ends, scanning for brackets and strings with regular expressions, then hands the message
whole to json.loads. `use_fast_parser()` puts it in place of the fallback only; an `ovs`
with its own C parser is left as it is.
"""

from __future__ import annotations

import json
import re
from typing import Any

_STRUCTURE = re.compile(r'["{}\[\]]')  # outside a string: what changes the depth
_STRING_END = re.compile(r'["\\]')  # inside a string: its end, or an escape
_SPACE = re.compile(r"[ \t\r\n]*")


class FramingParser:
    """One JSON value (an object or array: a JSON-RPC message) from a stream of str
    chunks; see the module's docstring."""

    def __init__(self, check_trailer: bool = False) -> None:
        self._check_trailer = check_trailer
        self._chunks: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._done = False
        self._error: str | None = None

    def feed(self, text: str) -> int:
        """Take `text` up to the end of the value; returns how many characters were used
        (all of them while the value goes on)."""
        if self._done:
            return 0
        i, end = 0, len(text)
        while i < end:
            if self._escape:  # the character after a backslash, whatever it is
                self._escape = False
                i += 1
                continue
            if self._in_string:
                found = _STRING_END.search(text, i)
                if found is None:
                    i = end
                    break
                i = found.end()
                if found.group() == '"':
                    self._in_string = False
                else:
                    self._escape = True
                continue
            if self._depth == 0:
                i = _SPACE.match(text, i).end()  # type: ignore[union-attr]
                if i == end:
                    break
                if text[i] not in "{[":
                    self._fail(f"a JSON-RPC message is an object, not {text[i]!r}")
                    return i
            found = _STRUCTURE.search(text, i)
            if found is None:
                i = end
                break
            i = found.end()
            mark = found.group()
            if mark == '"':
                self._in_string = True
            elif mark in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._chunks.append(text[:i])
                    self._done = True
                    if self._check_trailer and text[i:].strip():  # ovs.json.from_string
                        self._fail("trailing garbage at end of input")
                    return i
        self._chunks.append(text[:i])
        return i

    def _fail(self, why: str) -> None:
        self._error, self._done = why, True

    def is_done(self) -> bool:
        return self._done

    def finish(self) -> Any:
        """The value, or (as ovs.json.Parser) a str saying why there is none."""
        if self._error is not None:
            return self._error
        if not self._done:
            return "unexpected end of input" if "".join(self._chunks).strip() \
                else "empty input stream"
        try:
            return json.loads("".join(self._chunks))
        except ValueError as err:
            return f"invalid JSON: {err}"


def use_fast_parser() -> None:
    """Parse OVSDB's messages with FramingParser when `ovs` has no C parser of its own."""
    import ovs.json

    if ovs.json.PARSER != ovs.json.PARSER_C:
        ovs.json.Parser = FramingParser
