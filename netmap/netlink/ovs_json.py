"""A JSON-RPC message parser for the `ovs` package's JSON-RPC client (ovs.jsonrpc, which
netmap's OVSDB client and the package's IDL use) on the standard library's C JSON.

The `ovs` package parses every OVSDB message with its C parser (ovs._json) when it was built
against libopenvswitch, as Debian's python3-openvswitch is; built from PyPI's sdist without
it, the package falls back to a lexer in pure Python that reads one character per call.
That fallback was a large part of a realize's and release's time (README's Benchmarks,
bench_ovs.py).

`FramingParser` keeps ovs.json.Parser's interface (feed returns the characters it used,
is_done, finish returns the value or an error string) but only finds where one message
ends (strings dropped and brackets counted by regular expressions and itertools, in C),
then hands the message whole to json.loads. `use_fast_parser()` puts it in place of the
fallback only; an `ovs` with its own C parser is left as it is.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

# The patterns are written as runs ("unrolled": [^"\\]* then an escape and a run again),
# not one character per alternative: three times faster on a reply of 160 kB.
_CHARS = r'[^"\\]*(?:\\.[^"\\]*)*'  # a string's characters, escapes included
# whatever holds no unterminated string: other characters and whole strings (C speed)
_WHOLE = re.compile(r'[^"]*(?:"' + _CHARS + r'"[^"]*)*', re.S)
_STRING = re.compile('"' + _CHARS + '"', re.S)  # one whole string
_STRING_REST = re.compile(_CHARS + '"', re.S)  # the rest of one, to its end
_NOT_BRACKET = re.compile(r"[^{}\[\]]+")
_TOKEN = re.compile('"' + _CHARS + r'"|[{}\[\]]', re.S)
_DELTA = {"{": 1, "[": 1, "}": -1, "]": -1}
_SPACE = re.compile(r"[ \t\r\n]*")


class FramingParser:
    """One JSON value (an object or array: a JSON-RPC message) from a stream of str
    chunks; see the module's docstring.

    A chunk is read by regular expressions and counting, not character by character:
    strings are dropped whole, the brackets left are counted into running depths, and only
    the chunk where the depth returns to 0 is walked token by token, to find where the
    message ends."""

    def __init__(self, check_trailer: bool = False) -> None:
        self._check_trailer = check_trailer
        self._chunks: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escape = False  # a string's backslash was the last character of a chunk
        self._done = False
        self._error: str | None = None

    def feed(self, text: str) -> int:
        """Take `text` up to the end of the value; returns how many characters were used
        (all of them while the value goes on)."""
        if self._done:
            return 0
        start, end = 0, len(text)
        if self._in_string:
            if self._escape and text:
                self._escape, start = False, 1
            rest = _STRING_REST.match(text, start)
            if rest is None:  # the string goes on past this chunk
                self._carry_string(text, start)
                self._chunks.append(text)
                return end
            start, self._in_string = rest.end(), False
        if self._depth == 0:
            start = _SPACE.match(text, start).end()  # type: ignore[union-attr]
            if start == end:
                self._chunks.append(text)
                return end
            if text[start] not in "{[":
                self._fail(f"a JSON-RPC message is an object, not {text[start]!r}")
                return start
        whole = _WHOLE.match(text, start).end()  # type: ignore[union-attr]
        brackets = _NOT_BRACKET.sub("", _STRING.sub("", text[start:whole]))
        depths = list(accumulate(map(_DELTA.__getitem__, brackets), initial=self._depth))
        if 0 in depths[1:]:
            at = self._end_of_message(text, start, depths.index(0, 1))
            self._chunks.append(text[:at])
            self._done = True
            if self._check_trailer and text[at:].strip():  # ovs.json.from_string
                self._fail("trailing garbage at end of input")
            return at
        self._depth = depths[-1]
        if whole < end:  # a string begins here and goes on past this chunk
            self._in_string = True
            self._carry_string(text, whole + 1)
        self._chunks.append(text)
        return end

    def _carry_string(self, text: str, start: int) -> None:
        """Whether the string that runs past `text` ends on an escaping backslash."""
        tail = text[start:]
        self._escape = (len(tail) - len(tail.rstrip("\\"))) % 2 == 1

    @staticmethod
    def _end_of_message(text: str, start: int, count: int) -> int:
        """Where the `count`-th bracket outside strings from `start` ends."""
        seen = 0
        for token in _TOKEN.finditer(text, start):
            if token.group()[0] != '"':
                seen += 1
                if seen == count:
                    return token.end()
        raise AssertionError("the brackets counted are in the text")

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
