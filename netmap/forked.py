"""Work done by a forked child on the second core, its results sent back pickled.

Used where a command has a large, independent share of work (parsing thousands of files,
checking thousands of hosts). A child is only ever a shortcut: when there is no fork, other
threads (a forked child may inherit a held lock), one CPU, or a child that fails, the
caller gets None and does the work itself, so the answer never depends on the child.

The simple form runs `work()` and sends back what it returns (`result()`). A child may
also talk: `start(work, talk=True)` calls `work(link)`, where `link.send(value)` sends a
message before the work is done and `link.receive()` waits for one from the parent
(`ForkedWork.send`); the parent reads them in order with `receive()`. Messages are framed
(length, then the pickle), so one pipe carries any number of them.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
from collections.abc import Callable
from typing import Any

_SIZE = 8  # bytes of a message's length prefix


def can_fork_work() -> bool:
    return (hasattr(os, "fork") and threading.active_count() == 1
            and len(os.sched_getaffinity(0)) >= 2)


class ChildFailed(Exception):
    """The child ended (or was ended) before sending the message asked for."""


def _write_message(fd: int, value: Any) -> None:
    payload = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    data = memoryview(len(payload).to_bytes(_SIZE, "big") + payload)
    while data:
        data = data[os.write(fd, data):]


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 22))
        if not chunk:
            raise ChildFailed("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int) -> Any:
    size = int.from_bytes(_read_exactly(fd, _SIZE), "big")
    return pickle.loads(_read_exactly(fd, size))


class Link:
    """The child's end: messages to and from the parent."""

    def __init__(self, to_parent: int, from_parent: int) -> None:
        self._out, self._in = to_parent, from_parent

    def send(self, value: Any) -> None:
        _write_message(self._out, value)

    def receive(self) -> Any:
        return _read_message(self._in)


class ForkedWork:
    """Work computed in a child. `result()` waits for its value; `cancel()` drops it."""

    def __init__(self, pid: int, pipe: int, to_child: int = -1) -> None:
        self.pid, self.pipe, self.to_child = pid, pipe, to_child
        self._status: int | None = None

    @classmethod
    def start(cls, work: Callable[..., object], *, talk: bool = False) -> ForkedWork | None:
        if not can_fork_work():
            return None
        reader, writer = os.pipe()
        down_reader, down_writer = os.pipe() if talk else (-1, -1)
        try:
            pid = os.fork()
        except OSError:
            for fd in (reader, writer, down_reader, down_writer):
                if fd >= 0:
                    os.close(fd)
            return None
        if pid == 0:  # pragma: no cover - the child, which always _exits
            code = 0
            try:
                os.close(reader)
                if down_writer >= 0:
                    os.close(down_writer)
                _let_go_of_output()
                value = work(Link(writer, down_reader)) if talk else work()
                _write_message(writer, value)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(writer)
        if down_reader >= 0:
            os.close(down_reader)
        return cls(pid, reader, down_writer)

    def send(self, value: Any) -> bool:
        """A message to the child (started with talk=True); False when it is gone."""
        try:
            _write_message(self.to_child, value)
        except OSError:
            return False
        return True

    def receive(self) -> Any:
        """The child's next message; ChildFailed when it ended without sending one."""
        if self.pipe < 0:
            raise ChildFailed("already reaped")
        try:
            return _read_message(self.pipe)
        except (OSError, EOFError, pickle.UnpicklingError) as err:
            raise ChildFailed(str(err)) from err

    def result(self) -> Any:
        """The child's (last) value, or None when it failed. A whole message is proof
        enough: a process forked from our parent may read it but cannot reap the child."""
        try:
            value = self.receive()
        except ChildFailed:
            value = None
        self._reap()
        return value

    def cancel(self) -> None:
        """Not needed after all (e.g. an error ended the work early)."""
        if self.pipe < 0:
            return
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def close(self) -> None:
        """Let go of the child without waiting: it ends on its own (a child that finds
        nobody reading its pipe ends there) and is reaped here if it already has."""
        for fd in (self.pipe, self.to_child):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.pipe = self.to_child = -1
        if self._status is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self._status = status

    __del__ = close

    def _reap(self) -> int:
        for fd in (self.pipe, self.to_child):
            if fd >= 0:
                with contextlib.suppress(OSError):  # a writer that detached closed it
                    os.close(fd)
        self.pipe = self.to_child = -1
        if self._status is None:
            try:
                self._status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:
                self._status = -1
        return self._status


def _let_go_of_output() -> None:  # pragma: no cover - runs in the forked child
    """The child never prints; holding the parent's stdout/stderr would keep a pipe
    reading the command's output open after the command has exited (a child may outlive
    its parent, see netmap/cache.py)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
