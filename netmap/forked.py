"""Work done by a forked child on the second core and sent back pickled.

Used where a command has a large, independent share of work (parsing thousands of files,
checking thousands of hosts). A child is only ever a shortcut: when there is no fork, other
threads (a forked child may inherit a held lock), one CPU, or a child that fails, the
caller gets None and does the work itself, so the answer never depends on the child.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
from collections.abc import Callable
from typing import Any


def can_fork_work() -> bool:
    return (hasattr(os, "fork") and threading.active_count() == 1
            and len(os.sched_getaffinity(0)) >= 2)


class ForkedWork:
    """One value computed in a child. `result()` waits for it; `cancel()` drops it."""

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid, self.pipe = pid, pipe

    @classmethod
    def start(cls, work: Callable[[], object]) -> ForkedWork | None:
        if not can_fork_work():
            return None
        reader, writer = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(reader)
            os.close(writer)
            return None
        if pid == 0:  # pragma: no cover - the child, which always _exits
            code = 0
            try:
                os.close(reader)
                with os.fdopen(writer, "wb") as out:
                    out.write(pickle.dumps(work(), pickle.HIGHEST_PROTOCOL))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(writer)
        return cls(pid, reader)

    def result(self) -> Any:
        """The child's value, or None when it failed."""
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := os.read(self.pipe, 1 << 20):
                chunks.append(chunk)
        status = self._reap()
        if status != 0:
            return None
        try:
            return pickle.loads(b"".join(chunks))
        except Exception:
            return None

    def cancel(self) -> None:
        """Not needed after all (e.g. an error ended the work early)."""
        if self.pipe < 0:
            return
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> int:
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return -1
