"""How the command line ends: a quick exit once the answer is out.

A large fleet leaves millions of objects that the interpreter would free one by one at
exit, for nothing: the process is about to go. The console script therefore flushes its
output and ends with os._exit.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Flush and end the process without tearing it down."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the fd closed (`>&-`)
            continue
        # a reader that went away (| head): nothing more to say
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
