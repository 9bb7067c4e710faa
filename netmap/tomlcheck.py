"""Typed reading of parsed TOML with errors that name file, key, line and fix.

tomli gives line numbers for syntax errors only; for a wrong value the line is found again
in the file's text (`line_of`), and only when an error is raised, so loading stays fast.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import tomli

from netmap.errors import InputError
from netmap.model import Source

T = TypeVar("T")
KeyPath = tuple[str | int, ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*([A-Za-z0-9_.\-"' ]+?)\s*=""")


def _split_dotted(text: str) -> list[str]:
    return [part.strip().strip("\"'") for part in text.split(".")]


def line_of(text: str, path: KeyPath) -> int | None:
    """The 1-based line that defines `path` (or its nearest enclosing table), if found."""
    return LineIndex(text).line_of(path)


class LineIndex:
    """Where each table and key of one document starts, built on first use.

    One scan of the text, done only when a line is actually asked for (a scan per table
    made that the larger part of loading a big fleet: 86k scans for 10k hosts). It answers
    with the first line whose table/key path is the longest prefix of the path asked for.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._first: dict[tuple[str | int, ...], int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"text": self.text, "_first": None}  # the index is cheap to rebuild

    def line_of(self, path: KeyPath) -> int | None:
        if self._first is None:
            self._first = _first_lines(self.text)
        for depth in range(len(path), 0, -1):
            line = self._first.get(tuple(path[:depth]))
            if line is not None:
                return line
        return None


def _first_lines(text: str) -> dict[tuple[str | int, ...], int]:
    first: dict[tuple[str | int, ...], int] = {}
    current: list[str | int] = []
    array_counts: dict[tuple[str | int, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            current = list(_split_dotted(header.group(2)))
            if header.group(1) == "[[":
                key = tuple(current)
                array_counts[key] = array_counts.get(key, -1) + 1
                current.append(array_counts[key])
            candidate = tuple(current)
        else:
            key_match = _KEY.match(raw)
            if not key_match:
                continue
            candidate = (*current, *_split_dotted(key_match.group(1)))
        first.setdefault(candidate, number)
    return first


class LazySource(Source):
    """A Source whose line is looked up in the document's LineIndex when first read."""

    def __init__(self, file: str, line: int | None = None, *, index: LineIndex | None = None,
                 path: KeyPath = ()) -> None:
        object.__setattr__(self, "file", file)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_line", line)

    @property  # type: ignore[override]
    def line(self) -> int | None:
        if self._line is None and self._index is not None:
            object.__setattr__(self, "_line", self._index.line_of(self._path))
        return self._line

    def __repr__(self) -> str:
        return f"Source(file={self.file!r}, line={self.line!r})"

    # equal to a plain Source of the same place, as the eagerly built Source it replaces was
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Source):
            return NotImplemented
        return (self.file, self.line) == (other.file, other.line)

    def __hash__(self) -> int:
        return hash((self.file, self.line))


def key_text(path: KeyPath) -> str:
    """`("nics", 1, "mac")` -> `nics[1].mac`, as a user finds it in the file."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class Document:
    """One TOML file: its path, text and parsed data."""

    def __init__(self, path: str | Path, text: str, data: dict[str, Any]) -> None:
        self.path = path
        self.text = text
        self.data = data
        self._lines: LineIndex | None = None
        self._file = str(path)

    def source(self, path: KeyPath) -> Source:
        """Where `path` is defined, for messages; the line is found only when asked for."""
        if self._lines is None:
            self._lines = LineIndex(self.text)
        # LazySource(self._file, index=..., path=path) without its four object.__setattr__
        # calls (frozen dataclass): ten per host file
        source = object.__new__(LazySource)
        source.__dict__.update(file=self._file, _index=self._lines, _path=path, _line=None)
        return source

    @classmethod
    def read(cls, path: str | Path) -> Document:
        try:
            raw = _read_bytes(path)
        except OSError as err:
            raise InputError(
                f"cannot read the file: {err.strerror}", file=path, fix="check the path"
            ) from err
        try:
            text = raw.decode()
        except UnicodeDecodeError as err:
            raise InputError("is not UTF-8 text", file=path, fix="save it as UTF-8") from err
        try:
            data = tomli.loads(text)
        except tomli.TOMLDecodeError as err:
            raise InputError(
                f"is not valid TOML: {getattr(err, 'msg', err)}",
                file=path,
                line=getattr(err, "lineno", None),
                fix="correct the syntax at that line (strings need quotes, tables [name])",
            ) from err
        return cls(path, text, data)

    def error(self, path: KeyPath, problem: str, fix: str | None = None) -> InputError:
        return InputError(
            problem, file=self.path, key=key_text(path) or None, line=line_of(self.text, path),
            fix=fix,
        )

    def table(self, path: KeyPath = ()) -> Table:
        return Table(self, path, self.data)


def _read_bytes(path: str | Path) -> bytes:
    """The file's bytes, through the os module: open() builds a buffered file object
    first, twice the time of reading a 40-line file (7 us against 3.5 us)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"one of: {', '.join(choices)}" if choices else "none is defined"


class Table:
    """One TOML table of a document: its key path and data, read through a Schema."""

    __slots__ = ("data", "doc", "path")

    def __init__(self, doc: Document, path: KeyPath, data: Any) -> None:
        if type(data) is not dict:
            raise doc.error(path, f"must be a table, not {_kind(data)}",
                            f"write it as [{key_text(path)}] with keys below it")
        self.doc, self.path, self.data = doc, path, data

    def error(self, key: str | int | None, problem: str, fix: str | None = None) -> InputError:
        path = self.path if key is None else (*self.path, key)
        return self.doc.error(path, problem, fix)

    def check(self, key: str, value: T, test: Callable[[T], str | None], fix: str) -> T:
        problem = test(value)
        if problem:
            raise self.error(key, problem, fix)
        return value


Problem = tuple[KeyPath, str, str]  # where below the key, what is wrong, how to fix it


class Field:
    """One key a table may hold: its default, a quick test of a good value, and for a
    value failing it, the exact problem. `convert` turns a good value into what the
    loader uses (a tuple, a sub-Table)."""

    __slots__ = ("convert", "default", "ok", "problem", "required", "what")

    def __init__(self, what: str, ok: Callable[[Any], bool],
                 problem: Callable[[KeyPath, Any], Problem], *, default: Any = None,
                 required: bool = False,
                 convert: Callable[[Table, str, Any], Any] | None = None) -> None:
        self.what, self.ok, self.problem = what, ok, problem
        self.default, self.required, self.convert = default, required, convert


def _wrong_type(what: str) -> Callable[[KeyPath, Any], Problem]:
    return lambda path, value: ((), f"must be {what}, not {_kind(value)}",
                                f"write {path[-1]} = <{what}>")


def _not_a_table(path: KeyPath, value: Any) -> Problem:
    return (), f"must be a table, not {_kind(value)}", \
        f"write it as [{key_text(path)}] with keys below it"


def text(*, required: bool = False, default: str | None = None,
         choices: Iterable[str] | None = None) -> Field:
    """A string, one of `choices` when given."""
    if choices is None:
        return Field("a string", lambda v: type(v) is str, _wrong_type("a string"),
                     default=default, required=required)
    known = frozenset(choices)
    wrong = _wrong_type("a string")

    def problem(path: KeyPath, value: Any) -> Problem:
        if type(value) is not str:
            return wrong(path, value)
        return (), f"{value!r} is not known", did_you_mean(value, known)

    return Field("a string", lambda v: type(v) is str and v in known, problem,
                 default=default, required=required)


def number(*, low: int, high: int, required: bool = False, default: int | None = None,
           ) -> Field:
    """A whole number from low to high (true/false is not one)."""
    wrong = _wrong_type("a whole number")

    def problem(path: KeyPath, value: Any) -> Problem:
        if type(value) is not int:
            return wrong(path, value)
        return (), f"{value} is out of range", f"use a number from {low} to {high}"

    return Field("a whole number", lambda v: type(v) is int and low <= v <= high, problem,
                 default=default, required=required)


def flag(*, default: bool) -> Field:
    return Field("true or false", lambda v: type(v) is bool, _wrong_type("true or false"),
                 default=default)


def texts(*, default: tuple[str, ...] = ()) -> Field:
    """A list of strings, read as a tuple."""
    wrong = _wrong_type("a list of strings")

    def problem(path: KeyPath, value: Any) -> Problem:
        if type(value) is not list:
            return wrong(path, value)
        index, item = next((i, x) for i, x in enumerate(value) if type(x) is not str)
        return (index,), f"must be a string, not {_kind(item)}", f'quote it: "{item}"'

    return Field("a list of strings",
                 lambda v: type(v) is list and all(type(x) is str for x in v), problem,
                 default=default, convert=lambda table, key, value: tuple(value))


def subtable(*, required: bool = False) -> Field:
    """A sub-table ([a.b] or an inline { }), read as a Table (None when absent)."""
    return Field("a table", lambda v: type(v) is dict, _not_a_table, required=required,
                 convert=lambda parent, key, value: Table(parent.doc, (*parent.path, key),
                                                          value))


def named_tables() -> Field:
    """A table of tables ([uplinks.NAME]), read as [(NAME, Table), ...] in file order."""
    def convert(parent: Table, key: str, value: dict[str, Any]) -> list[tuple[str, Table]]:
        path = (*parent.path, key)
        return [(name, Table(parent.doc, (*path, name), item)) for name, item in value.items()]

    return Field("a table", lambda v: type(v) is dict, _not_a_table, default=[],
                 convert=convert)


def table_array() -> Field:
    """An array of tables ([[nics]]), read as [Table, ...]."""
    def convert(parent: Table, key: str, value: list[Any]) -> list[Table]:
        return [Table(parent.doc, (*parent.path, key, index), item)
                for index, item in enumerate(value)]

    return Field("an array of tables ([[...]])", lambda v: type(v) is list,
                 _wrong_type("an array of tables ([[...]])"), default=[], convert=convert)


class Schema:
    """The keys one kind of table may hold. `read` answers the usual, valid table with a
    test per key present; anything else is looked at again, key by key in the order the
    fields are declared, to name the first problem exactly (a file with several mistakes
    is corrected one message at a time)."""

    def __init__(self, **fields: Field) -> None:
        self.fields = fields
        self._tests = {key: field.ok for key, field in fields.items()}
        self._defaults = {key: field.default for key, field in fields.items()}
        self._required = frozenset(key for key, field in fields.items() if field.required)
        self._converts = [(key, field.convert) for key, field in fields.items()
                          if field.convert is not None]

    def read(self, table: Table) -> dict[str, Any]:
        data = table.data
        tests = self._tests
        for key, value in data.items():
            ok = tests.get(key)
            if ok is None or not ok(value):
                raise self._first_problem(table)
        if self._required and not self._required <= data.keys():
            raise self._first_problem(table)
        values = self._defaults | data
        for key, convert in self._converts:
            if key in data:
                values[key] = convert(table, key, data[key])
        return values

    def _first_problem(self, table: Table) -> InputError:
        data = table.data
        for key, field in self.fields.items():
            if key in data:
                value = data[key]
                if field.ok(value):
                    continue
                path = (*table.path, key)
                below, problem, fix = field.problem(path, value)
                return table.doc.error((*path, *below), problem, fix)
            if field.required:
                typo = difflib.get_close_matches(key, [k for k in data if k != key], n=1)
                if typo:  # say "uplnk is not known" rather than "uplink is missing"
                    return table.error(typo[0], "is not a known key here",
                                       f"did you mean {key!r}?")
                if field.what == "a table":
                    return table.error(key, "is missing",
                                       f"add a [{key_text((*table.path, key))}] table")
                return table.error(key, "is missing", f"add {key} = <{field.what}>")
        unknown = next(key for key in data if key not in self.fields)
        return table.error(unknown, "is not a known key here",
                           f"remove it or {did_you_mean(unknown, self.fields)}")


def _kind(value: Any) -> str:
    return {bool: "true/false", int: "a number", float: "a decimal number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
