"""How the command line ends: work left for after the answer, then a quick exit.

A large fleet leaves millions of objects that the interpreter would free one by one at
exit, for nothing: the process is about to go (10k hosts: 0.1-0.2 s after the answer was
printed). The console script therefore flushes its output, runs the work commands left
for after the answer (`later`: writing the fleet cache), and ends with os._exit. Where
main() runs inside another program (tests, the libvirt hook), the same work runs at the
interpreter's exit instead, through atexit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Callable
from typing import NoReturn

_pending: list[Callable[[], object]] = []
# Work that ran, kept referenced until the process ends: the cache writer is forked from
# us, and freeing what its work holds would write to every page it shares with us, each
# write a copy-on-write fault (10k hosts: 60 ms between forking the writer and exiting).
_ran: list[Callable[[], object]] = []


def later(work: Callable[[], object]) -> None:
    """Run `work` once the command has answered, before the process ends."""
    if not _pending:
        atexit.register(run_pending)
    _pending.append(work)


def run_pending() -> None:
    while _pending:
        work = _pending.pop(0)
        _ran.append(work)
        # what is left for later (a cache) never changes the answer
        with contextlib.suppress(Exception):
            work()


def exit_now(code: int) -> NoReturn:
    """Flush, run what was left for later, and end the process without tearing it down."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the fd closed (`>&-`)
            continue
        # a reader that went away (| head): nothing more to say
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    run_pending()
    os._exit(code)
