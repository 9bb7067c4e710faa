"""Typed reading of parsed TOML with errors that name file, key, line and fix.

tomli gives line numbers for syntax errors only; for a wrong value the line is found again
in the file's text (`line_of`), and only when an error is raised, so loading stays fast.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from netmap.errors import InputError
from netmap.model.fleet import Source
from netmap.support.regular_file import read_regular

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
    made that the larger part of loading a big fleet). It answers
    with the first line whose table/key path is the longest prefix of the path asked for.

    Pickled (the load's store, its second parsing process) it keeps the file's name and a
    digest of the text, not the text: the text was about half of a stored host's bytes,
    and a line is asked for rarely (a finding, an error). Then the file is read again,
    and used only when it is still that text; else the line is unknown (None), never one
    of another version of the file.
    """

    __slots__ = ("_digest", "_first", "file", "text")

    def __init__(self, text: str | None, file: str | None = None,
                 digest: bytes | None = None) -> None:
        self.text, self.file, self._digest = text, file, digest
        self._first: dict[tuple[str | int, ...], int] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        if self.file is None or self.text is None:  # nothing to read back from, or unread
            return LineIndex, (self.text, self.file, self._digest)
        return LineIndex, (None, self.file, self._digest or text_digest(self.text))

    def line_of(self, path: KeyPath) -> int | None:
        if self._first is None:
            text = self.text if self.text is not None else self._read_back()
            self._first = {} if text is None else _first_lines(text)  # once, either way
        for depth in range(len(path), 0, -1):
            line = self._first.get(tuple(path[:depth]))
            if line is not None:
                return line
        return None

    def _read_back(self) -> str | None:
        """The text again, from the file, when it is still what was parsed."""
        if self.file is None or self._digest is None:
            return None
        try:
            raw = read_regular(self.file)
        except (OSError, InputError):
            return None
        if text_digest(raw) != self._digest:
            return None  # changed since: its lines would be another version's
        self.text = raw.decode()
        return self.text


def text_digest(text: str | bytes) -> bytes:
    """What a LineIndex read back from its file must hash to."""
    import hashlib  # here: only a load that stores what it parsed hashes

    data = text.encode() if isinstance(text, str) else text
    return hashlib.blake2b(data, digest_size=16).digest()


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

    __slots__ = ("_index", "_line", "_path")
    _index: LineIndex | None
    _line: int | None
    _path: KeyPath

    def __init__(self, file: str, line: int | None, index: LineIndex | None,
                 path: KeyPath) -> None:
        _set_file(self, file)
        _set_index(self, index)
        _set_path(self, path)
        _set_line(self, line)

    def __reduce__(self) -> tuple[Any, ...]:
        return LazySource, (self.file, self._line, self._index, self._path)

    @property
    def line(self) -> int | None:
        if self._line is None and self._index is not None:
            _set_line(self, self._index.line_of(self._path))
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


# The slots' own setters: a frozen Source refuses setattr, and a host file makes ten of these.
# (Read from the class __dict__: the checker takes `LazySource._line` for the slot's value.)
_set_file: Callable[[Source, str], None] = Source.__dict__["file"].__set__
_set_index: Callable[[LazySource, LineIndex | None], None] = LazySource.__dict__["_index"].__set__
_set_path: Callable[[LazySource, KeyPath], None] = LazySource.__dict__["_path"].__set__
_set_line: Callable[[LazySource, int | None], None] = LazySource.__dict__["_line"].__set__


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
            self._lines = LineIndex(self.text, self._file)
        return LazySource(self._file, None, self._lines, path)

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
        import tomli  # here: a warm load of a large fleet parses no TOML

        try:
            data = tomli.loads(text)
        except RecursionError as err:  # tomli recurses per nesting level and dotted part
            line = _deepest_line(text)
            raise InputError(
                "nests tables, arrays or dotted keys too deeply to read",
                file=path, line=line,
                fix="a mapping needs a few levels: write the tables out as [a.b] headers",
            ) from err
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

    def check(self, path: KeyPath, value: T, test: Callable[[T], str | None], fix: str) -> T:
        """`value`, unless `test` names a problem with it."""
        problem = test(value)
        if problem:
            raise self.error(path, problem, fix)
        return value

    def table(self, path: KeyPath = ()) -> Table:
        return Table(self, path, self.data)


def _read_bytes(path: str | Path) -> bytes:
    """The file's bytes, through the os module (open() builds a buffered file object
    first, twice the time of reading a 40-line file); only a regular file of bounded
    size (netmap.support.regular_file), so a FIFO or /dev/zero is an error, not a hang."""
    return read_regular(path)


def _deepest_line(text: str) -> int | None:
    """The line most likely to nest too deeply: the most brackets, braces or dots."""
    best, where = 0, None
    for number, line in enumerate(text.splitlines(), start=1):
        depth = max(line.count("["), line.count("{")) + line.count(".")
        if depth > best:
            best, where = depth, number
    return where


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"one of: {', '.join(choices)}" if choices else "none is defined"


class Table:
    """One TOML table of a document: its key path and data (for naming a problem)."""

    __slots__ = ("data", "doc", "path")

    def __init__(self, doc: Document, path: KeyPath, data: Any) -> None:
        if type(data) is not dict:
            raise doc.error(path, f"must be a table, not {_kind(data)}",
                            f"write it as [{key_text(path)}] with keys below it")
        self.doc, self.path, self.data = doc, path, data

    def error(self, key: str | int | None, problem: str, fix: str | None = None) -> InputError:
        path = self.path if key is None else (*self.path, key)
        return self.doc.error(path, problem, fix)


Problem = tuple[KeyPath, str, str]  # where below the key, what is wrong, how to fix it


class Field:
    """One key a table may hold: its default, the type of a good value (`kind()`, for
    msgspec, built when first needed; None where `schema` says it), a quick test of a
    good value and, for a value failing it, the exact problem. `schema`: what the tables
    below the key hold; `shape`: how many, "one" table, tables by "named" key, or an
    "array" of them."""

    __slots__ = ("default", "kind", "ok", "problem", "required", "schema", "shape",
                 "what")

    def __init__(self, what: str, kind: Callable[[], Any] | None, ok: Callable[[Any], bool],
                 problem: Callable[[KeyPath, Any], Problem], *, default: Any = None,
                 required: bool = False, schema: Schema | None = None,
                 shape: str | None = None) -> None:
        self.what, self.kind, self.ok, self.problem = what, kind, ok, problem
        self.default, self.required = default, required
        self.schema, self.shape = schema, shape


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
        return Field("a string", lambda: str, lambda v: type(v) is str, _wrong_type("a string"),
                     default=default, required=required)
    known = tuple(choices)
    wrong = _wrong_type("a string")

    def problem(path: KeyPath, value: Any) -> Problem:
        if type(value) is not str:
            return wrong(path, value)
        return (), f"{value!r} is not known", did_you_mean(value, known)

    return Field("a string", lambda: Literal[known], lambda v: type(v) is str and v in known,
                 problem, default=default, required=required)


def number(*, low: int, high: int, required: bool = False, default: int | None = None,
           ) -> Field:
    """A whole number from low to high (true/false is not one)."""
    wrong = _wrong_type("a whole number")

    def problem(path: KeyPath, value: Any) -> Problem:
        if type(value) is not int:
            return wrong(path, value)
        return (), f"{value} is out of range", f"use a number from {low} to {high}"

    return Field("a whole number", lambda: Annotated[int, _range(low, high)],
                 lambda v: type(v) is int and low <= v <= high, problem,
                 default=default, required=required)


def flag(*, default: bool) -> Field:
    return Field("true or false", lambda: bool, lambda v: type(v) is bool,
                 _wrong_type("true or false"), default=default)


def texts(*, default: tuple[str, ...] = ()) -> Field:
    """A list of strings, read as a tuple."""
    wrong = _wrong_type("a list of strings")

    def problem(path: KeyPath, value: Any) -> Problem:
        if type(value) is not list:
            return wrong(path, value)
        index, item = next((i, x) for i, x in enumerate(value) if type(x) is not str)
        return (index,), f"must be a string, not {_kind(item)}", f'quote it: "{item}"'

    return Field("a list of strings", lambda: tuple[str, ...],
                 lambda v: type(v) is list and all(type(x) is str for x in v), problem,
                 default=default)


def text_table() -> Field:
    """A table of strings ({ key = "value" }), read as a dict."""
    wrong = _wrong_type("a table of strings")

    def problem(path: KeyPath, value: Any) -> Problem:
        if type(value) is not dict:
            return wrong(path, value)
        key, item = next((k, x) for k, x in value.items() if type(x) is not str)
        return (key,), f"must be a string, not {_kind(item)}", f'quote it: "{item}"'

    return Field("a table of strings", lambda: dict[str, str],
                 lambda v: type(v) is dict and all(type(x) is str for x in v.values()),
                 problem, default={})


def subtable(schema: Schema, *, required: bool = False) -> Field:
    """A sub-table ([a.b] or an inline { }) holding what `schema` says (None when absent)."""
    return Field("a table", None, lambda v: type(v) is dict, _not_a_table,
                 required=required, schema=schema, shape="one")


def named_tables(schema: Schema) -> Field:
    """A table of tables ([uplinks.NAME]), read as {NAME: what `schema` says} in file
    order."""
    return Field("a table", None, lambda v: type(v) is dict, _not_a_table, default={},
                 schema=schema, shape="named")


def table_array(schema: Schema) -> Field:
    """An array of tables ([[nics]]), read as a tuple of what `schema` says."""
    return Field("an array of tables ([[...]])", None,
                 lambda v: type(v) is list, _wrong_type("an array of tables ([[...]])"),
                 default=(), schema=schema, shape="array")


class Schema:
    """The keys one kind of table may hold, and the tables below them.

    `read` checks a whole document in one msgspec conversion (in C: types, ranges,
    choices, unknown keys, nested tables), and returns its tables as msgspec Structs with
    an attribute per key. Only a document that fails is looked at again, by the Python
    tests of each field, key by key in the order the fields are declared and table by
    table, to name the first problem exactly (a file with several mistakes is corrected
    one message at a time). The same declaration serves both, and the C conversion is the
    fast path because nearly every file is valid."""

    def __init__(self, name: str, /, **fields: Field) -> None:
        self.name, self.fields = name, fields
        self._struct: type | None = None

    @property
    def struct(self) -> type:
        """The msgspec Struct type of a valid table, built on first use (msgspec is
        imported by the commands that read files, not by those that never do)."""
        if self._struct is None:
            import msgspec

            def spec(key: str, field: Field) -> tuple[Any, ...]:
                if field.schema is None:
                    assert field.kind is not None  # only a field with a schema has none
                    kind = field.kind()
                else:
                    # a Struct type made at run time, as msgspec reads it: the checker
                    # only knows static types as a generic's parameter
                    inner = field.schema.struct
                    if field.shape == "one":
                        kind = inner
                    elif field.shape == "named":
                        kind = dict[str, inner]  # type: ignore[valid-type]
                    else:
                        kind = tuple[inner, ...]  # type: ignore[valid-type]
                if field.required:
                    return key, kind
                if field.default is None:
                    return key, kind | None, None
                return key, kind, field.default

            self._struct = msgspec.defstruct(
                self.name, [spec(key, field) for key, field in self.fields.items()],
                kw_only=True, forbid_unknown_fields=True)
        return self._struct

    def read(self, doc: Document) -> Any:
        """The document, which this schema describes, as Structs."""
        import msgspec

        try:
            return msgspec.convert(doc.data, self.struct)
        except msgspec.ValidationError as err:
            problem = self.first_problem(doc.table())
            if problem is None:  # msgspec and the tests disagree: still say what and where
                what, _, where = str(err).partition(" - at `$")
                problem = doc.error(_path_of(where.rstrip("`")), what)
            raise problem from None

    def first_problem(self, table: Table) -> InputError | None:
        """The first problem of `table` and the tables below it, in declaration order."""
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
        unknown = next((key for key in data if key not in self.fields), None)
        if unknown is not None:
            return table.error(unknown, "is not a known key here",
                               f"remove it or {did_you_mean(unknown, self.fields)}")
        for key, field in self.fields.items():
            if field.schema is None or key not in data:
                continue
            path, value = (*table.path, key), data[key]
            if field.shape == "one":
                tables = [(path, value)]
            elif field.shape == "named":
                tables = [((*path, name), item) for name, item in value.items()]
            else:
                tables = [((*path, index), item) for index, item in enumerate(value)]
            for where, item in tables:
                try:
                    found = field.schema.first_problem(Table(table.doc, where, item))
                except InputError as err:  # not a table at all
                    return err
                if found is not None:
                    return found
        return None


def _range(low: int, high: int) -> Any:
    import msgspec

    return msgspec.Meta(ge=low, le=high)


def _path_of(where: str) -> KeyPath:
    """msgspec's `.nics[0].mac` as a key path; it does not name the keys of a table of
    tables (`.uplinks[...].mtu`), so the path ends at that table."""
    path: list[str | int] = []
    for name, index, unnamed in re.findall(r"\.([^.\[]+)|\[(\d+)\]|(\[\.\.\.\])", where):
        if unnamed:
            break
        path.append(name if name else int(index))
    return tuple(path)


def _kind(value: Any) -> str:
    return {bool: "true/false", int: "a number", float: "a decimal number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
