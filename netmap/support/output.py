"""Standard output as the command line writes it: it never raises in the middle of a command.

Three things go wrong with stdout that are not the command's fault:

* the reader went away (`netmap show | head`): EPIPE. Nothing more can be said to anyone,
  so netmap stops writing and exits quietly with the command's own exit code: a script
  that runs `set -o pipefail` still gets the verdict, and a closed pipe never cuts a
  command short half-way (realize finishes what it started either way);
* the output cannot be written (`>/dev/full`, `>&-`, an I/O error): the answer is lost,
  which the user must hear about: one line on stderr, and exit 2 (see `finish`);
* the stream's encoding lacks a character (`LC_ALL=C`, `PYTHONIOENCODING=ascii`): netmap's
  own symbols become ASCII of the same width, so tables keep their columns (rich itself
  draws ASCII boxes and tree guides for such a stream), and anything else becomes '?'.

Like C's stdio, the first write error is remembered and every later write is dropped;
the command runs to its end and `finish` decides what the error means.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from collections.abc import Iterator
from typing import Any

# netmap's symbols and rich's ellipsis, each as ASCII of the same width where it can be
ASCII_FALLBACK = str.maketrans({"→": ">", "✗": "x", "≠": "!", "…": "..."})


class _Failed:
    """The first error writing stdout, shared by the text and the binary side."""

    def __init__(self) -> None:
        self.error: OSError | None = None

    def record(self, err: OSError, stream: Any) -> None:
        if self.error is None:
            self.error = err
            _silence(stream)


def _silence(stream: Any) -> None:
    """Point fd 1 at /dev/null, so that what is still buffered (and the interpreter's
    flush at exit) goes nowhere instead of failing again with 'Exception ignored'."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    if fd != 1:
        return
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


class _GuardedBinary:
    """stdout.buffer, for JSON written as bytes."""

    def __init__(self, raw: Any, failed: _Failed, owner: Any) -> None:
        self._raw = raw
        self._failed = failed
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = len(data)
        if self._failed.error is None:
            try:
                self._raw.write(data)
            except OSError as err:
                self._failed.record(err, self._owner)
        return size

    def flush(self) -> None:
        if self._failed.error is None:
            try:
                self._raw.flush()
            except OSError as err:
                self._failed.record(err, self._owner)


class GuardedStdout:
    """A stand-in for sys.stdout whose writes never raise (module docstring). A plain
    class: io.TextIOBase would make `encoding` a read-only attribute of its own."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._failed = _Failed()
        if stream is None:  # started with fd 1 closed (`>&-`): Python made stdout None
            self._failed.error = OSError(errno.EBADF, "standard output is closed")
        self._encoding = getattr(stream, "encoding", None) or "utf-8"

    @property
    def error(self) -> OSError | None:
        return self._failed.error

    @property
    def encoding(self) -> str:  # rich draws ASCII boxes when this is not UTF-*
        return self._encoding

    @property
    def errors(self) -> str:
        return getattr(self._stream, "errors", "strict")

    @property
    def buffer(self) -> Any:
        raw = getattr(self._stream, "buffer", None)
        return None if raw is None else _GuardedBinary(raw, self._failed, self._stream)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return bool(self._stream.isatty())
        except (AttributeError, OSError, ValueError):
            return False

    def fileno(self) -> int:
        if self._stream is None:
            raise io.UnsupportedOperation("standard output is closed")
        return self._stream.fileno()

    def write(self, text: str) -> int:
        if self._failed.error is None:
            try:
                try:
                    self._stream.write(text)
                except UnicodeEncodeError:
                    self._stream.write(ascii_fallback(text, self._encoding))
            except OSError as err:
                self._failed.record(err, self._stream)
        return len(text)

    def flush(self) -> None:
        if self._failed.error is None:
            try:
                self._stream.flush()
            except OSError as err:
                self._failed.record(err, self._stream)


def ascii_fallback(text: str, encoding: str) -> str:
    """`text` as `encoding` can carry it: netmap's symbols as ASCII, the rest as '?'.
    (Encoding fails before a byte is written, so the whole text is written again.)"""
    return text.translate(ASCII_FALLBACK).encode(encoding, "replace").decode(encoding)


@contextlib.contextmanager
def guarded_stdout() -> Iterator[GuardedStdout]:
    """sys.stdout guarded for the duration; the original is back afterwards."""
    original = sys.stdout
    guard = GuardedStdout(original)
    sys.stdout = guard
    try:
        yield guard
    finally:
        guard.flush()
        sys.stdout = original


def is_closed_pipe(err: OSError) -> bool:
    return isinstance(err, BrokenPipeError) or err.errno == errno.EPIPE
