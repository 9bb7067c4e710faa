"""Typed reading of parsed TOML with errors that name file, key, line and fix.

tomli gives line numbers for syntax errors only; for a wrong value the line is found again
in the file's text (`line_of`), and only when an error is raised, so loading stays fast.
"""

from __future__ import annotations

import difflib
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

    def __init__(self, path: Path, text: str, data: dict[str, Any]) -> None:
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
    def read(cls, path: Path) -> Document:
        try:
            raw = path.read_bytes()
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


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"one of: {', '.join(choices)}" if choices else "none is defined"


_ABSENT: Any = object()


class Table:
    """A TOML table being read: typed getters, and `done()` refuses keys nobody read."""

    def __init__(self, doc: Document, path: KeyPath, data: Any) -> None:
        self.doc = doc
        self.path = path
        if not isinstance(data, dict):
            raise doc.error(path, f"must be a table, not {_kind(data)}",
                            f"write it as [{key_text(path)}] with keys below it")
        self.data: dict[str, Any] = data
        self._read: set[str] = set()

    def error(self, key: str | int | None, problem: str, fix: str | None = None) -> InputError:
        path = self.path if key is None else (*self.path, key)
        return self.doc.error(path, problem, fix)

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, types: tuple[type, ...], what: str, required: bool,
             default: Any) -> Any:
        self._read.add(key)
        value = self.data.get(key, _ABSENT)  # one lookup: a big fleet makes 60 per host
        if value is _ABSENT:
            if required:
                typo = difflib.get_close_matches(key, [k for k in self.data if k != key], n=1)
                if typo:  # say "uplnk is not known" rather than "uplink is missing"
                    raise self.error(typo[0], "is not a known key here",
                                     f"did you mean {key!r}?")
                raise self.error(key, "is missing", f"add {key} = <{what}>")
            return default
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise self.error(key, f"must be {what}, not {_kind(value)}",
                             f"write {key} = <{what}>")
        return value

    def str(self, key: str, *, required: bool = False, default: str | None = None,
            choices: Iterable[str] | None = None) -> Any:
        value = self._get(key, (str,), "a string", required, default)
        if value is not None and choices is not None and value not in choices:
            raise self.error(key, f"{value!r} is not known", did_you_mean(value, choices))
        return value

    def int(self, key: str, *, required: bool = False, default: int | None = None,
            low: int | None = None, high: int | None = None) -> Any:
        value = self._get(key, (int,), "a whole number", required, default)
        out_of_range = value is not None and (
            (low is not None and value < low) or (high is not None and value > high))
        if out_of_range and key in self.data:
            raise self.error(key, f"{value} is out of range",
                             f"use a number from {low} to {high}")
        return value

    def bool(self, key: str, *, default: bool) -> bool:
        return self._get(key, (bool,), "true or false", False, default)

    def str_list(self, key: str, *, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self._get(key, (list,), "a list of strings", False, None)
        if value is None:
            return default
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.doc.error((*self.path, key, index),
                                     f"must be a string, not {_kind(item)}",
                                     f'quote it: "{item}"')
        return tuple(value)

    def sub(self, key: str, *, required: bool = False) -> Table | None:
        self._read.add(key)
        if key not in self.data:
            if required:
                raise self.error(key, "is missing", f"add a [{key_text((*self.path, key))}] table")
            return None
        return Table(self.doc, (*self.path, key), self.data[key])

    def items(self, key: str) -> list[tuple[str, Table]]:
        """The sub-tables of `key` (e.g. every [uplinks.NAME]), in file order."""
        parent = self.sub(key)
        if parent is None:
            return []
        parent._read.update(parent.data)
        return [(name, Table(self.doc, (*parent.path, name), value))
                for name, value in parent.data.items()]

    def array(self, key: str) -> list[Table]:
        """Each table of an array of tables (e.g. every [[nics]])."""
        value = self._get(key, (list,), "an array of tables ([[...]])", False, [])
        return [Table(self.doc, (*self.path, key, index), item) for index, item in enumerate(value)]

    def check(self, key: str, value: T, test: Callable[[T], str | None], fix: str) -> T:
        problem = test(value)
        if problem:
            raise self.error(key, problem, fix)
        return value

    def done(self) -> None:
        if self._read.issuperset(self.data):  # the usual case, answered without a loop
            return
        unknown = [key for key in self.data if key not in self._read]
        if unknown:
            key = unknown[0]
            known = [k for k in self._read]
            raise self.error(key, "is not a known key here",
                             f"remove it or {did_you_mean(key, known)}")


def _kind(value: Any) -> str:
    return {bool: "true/false", int: "a number", float: "a decimal number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
