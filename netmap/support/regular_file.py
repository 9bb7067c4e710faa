"""Reading a mapping file: a regular file of bounded size, or a clear error, never a hang.

A FIFO placed as `hosts/x.toml` blocks open() until a writer comes, and a link to
/dev/zero reads forever. So the file is opened without blocking, checked with fstat on
the descriptor that is read (no window between a check and the open), and read up to
MAX_MAPPING_BYTES, whatever its size said (a file may grow while we read it).
"""

from __future__ import annotations

import errno
import os
import stat

from netmap.errors import InputError

# The largest mapping file read (README says so): a generated host file is ~1 KB, a
# networks.toml of 10,000 networks ~1 MB, a large libvirt domain XML ~100 KB.
MAX_MAPPING_BYTES = 8 * 1024 * 1024

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular(path: str | os.PathLike[str], kind: str) -> InputError:
    return InputError(f"is {kind}, not a regular file; netmap reads mapping files "
                      "only from regular files", file=os.fspath(path),
                      fix="replace it with the file itself (a symlink to a regular file "
                      "is fine)")


def too_large(path: str | os.PathLike[str], limit: int) -> InputError:
    return InputError(f"is larger than {_size(limit)}, the most netmap reads of a mapping "
                      "file", file=os.fspath(path),
                      fix="check that this is the right file; a host file takes about 1 KB")


def read_regular(path: str | os.PathLike[str], limit: int = MAX_MAPPING_BYTES) -> bytes:
    """The bytes of the regular file at `path` (symlinks followed), at most `limit`.
    Raises InputError for anything else, OSError when it cannot be opened or read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        kind = describe(path) if err.errno == errno.ENXIO else None  # a socket
        if kind is not None:
            raise not_regular(path, kind) from err
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(path, kind_of(st.st_mode))
        if st.st_size > limit:
            raise too_large(path, limit)
        first = os.read(fd, st.st_size + 1)
        if len(first) <= st.st_size:
            return first  # a short read of a regular file is its end: one read, not two
        chunks = [first]  # it grew since fstat: read on, up to the limit
        size = len(first)
        while size <= limit and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise too_large(path, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"


def describe(path: str | os.PathLike[str]) -> str | None:
    """What `path` is when it exists but is not a regular file (None: regular or absent)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else kind_of(mode)
