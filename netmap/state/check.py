"""What makes netmap's state directory or a state file unusable, said with the fix.

A state file of the wrong shape is refused whole, never half read: the guests it would drop
are the records that let release undo their devices. Only what netmap's code relies on is
checked, so fields a newer netmap records are kept. A directory netmap cannot use (a file,
read-only, under /proc, another user's) is named with the reason before anything changes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from netmap.errors import InputError, NetmapError, PrivilegeError

DEFAULT_STATE_DIR = "/run/netmap"
VERSION = 1
PENDING, REALIZED = "pending", "realized"


def _chosen_by(explicit: str | os.PathLike[str] | None) -> str | None:
    """Where the state directory was named: the key a user changes to move it."""
    if explicit:
        return "--state-dir"
    return "$NETMAP_STATE_DIR" if os.environ.get("NETMAP_STATE_DIR") else None


def dir_error(directory: Path, err: OSError, explicit: str | os.PathLike[str] | None = None,
              ) -> NetmapError:
    """Why netmap cannot keep its lock and records in `directory`, and what to do."""
    chosen = _chosen_by(explicit)
    elsewhere = ("set $NETMAP_STATE_DIR (or --state-dir) to a directory on a writable, "
                 f"local file system (the default is {DEFAULT_STATE_DIR}, a tmpfs)")
    who = _unprivileged()
    if err.errno in (errno.EACCES, errno.EPERM) and who:
        return PrivilegeError(
            f"netmap may not write its state directory {directory}: {err.strerror} for "
            f"{who}; realize and release keep a per-host lock and records there",
            fix=f"run netmap as root (the owner of {directory}), or {elsewhere}")
    if err.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        culprit = _not_a_directory(Path(err.filename or directory))
        problem = f"is not a directory netmap can use: {culprit} is {_kind_of(culprit)}"
        # a path the user chose is corrected there; only what sits in the default's way
        # is moved
        fix = elsewhere if chosen else f"move {culprit} aside, or {elsewhere}"
    elif err.errno == errno.EROFS:
        problem = "is on a read-only file system"
        fix = elsewhere
    elif err.errno in (errno.ENOENT, errno.EACCES, errno.EPERM):
        # mkdir -p fails so, and root is refused, only where nothing may be made
        problem = (f"cannot be made or written there: its file system refuses new files "
                   f"({err.strerror}), as /proc and /sys do")
        fix = elsewhere
    else:  # ENOSPC, ELOOP, EIO...: the kernel's reason says it
        problem = f"cannot hold netmap's lock and records: {err.strerror or err}"
        fix = elsewhere
    return InputError(f"netmap's state directory {problem}", file=directory, key=chosen,
                      fix=fix)


def _unprivileged() -> str | None:
    """Who this process is when file permissions bind it (not root with CAP_DAC_OVERRIDE,
    which only a file system itself refuses: /proc, /sys)."""
    from netmap.netlink.access import CAP_DAC_OVERRIDE, effective_capabilities

    uid = os.geteuid()
    if uid != 0:
        return f"user id {uid}"
    caps = effective_capabilities()
    return None if caps is None or caps & (1 << CAP_DAC_OVERRIDE) else (
        "root without CAP_DAC_OVERRIDE")


def _not_a_directory(path: Path) -> Path:
    """The part of `path` that exists and is no directory (what stops mkdir -p)."""
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            return path if part.is_dir() else part
    return path


def _kind_of(path: Path) -> str:
    try:
        mode = path.lstat().st_mode
    except OSError:
        return "missing"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def damaged(path: Path, host: str, key: str, problem: str) -> InputError:
    return InputError(
        f"netmap's state file is damaged: {key or 'the file'} {problem}; nothing was changed",
        file=path, key=key or None,
        fix=f"repair the entry if you know what it held; else move the file aside (mv {path} "
        f"{path}.damaged): netmap then forgets what it made on {host}, and 'netmap drift' "
        "lists those devices as untracked, to remove by hand")


MAX_STATE_BYTES = 256 << 20  # ~ a million resources; more is not a state netmap wrote


def read_regular(path: Path) -> bytes:
    """The file's bytes; a FIFO, device or directory in its place is refused, not read
    (O_NONBLOCK: opening a FIFO never waits for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{_kind_of(path)}, not a regular file")
        if info.st_size > MAX_STATE_BYTES:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than netmap ever writes")
        with os.fdopen(os.dup(fd), "rb") as stream:
            return stream.read()
    finally:
        os.close(fd)


def _key(*parts: str) -> str:
    """A JSON path a person can find in the file: guests["vm1"].resources."""
    out = parts[0]
    for part in parts[1:]:
        out += f".{part}" if part.isidentifier() else f"[{json.dumps(part)}]"
    return out


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_object(value: object) -> bool:
    return isinstance(value, dict)


def _is_objects(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


Field = tuple[str, Callable[[object], bool], str, bool]  # name, test, what it must be, required
_RESOURCE_FIELDS: tuple[Field, ...] = (
    ("guests", _is_strings, "a list of guest names", True),
    ("created", lambda v: isinstance(v, bool), "true or false", True),
    ("step", _is_object, "an object (the plan step)", True),
    ("info", _is_object, "an object", False))
_GUEST_FIELDS: tuple[Field, ...] = (
    ("status", lambda v: v in (PENDING, REALIZED), f"{PENDING!r} or {REALIZED!r}", True),
    ("resources", _is_strings, "a list of resource keys", True),
    ("nics", _is_objects, "a list of objects", False))


def shape_problem(data: object, host: str) -> tuple[str, str] | None:
    """(key, what is wrong) for a state document this netmap cannot use as it is, else None.
    Only what the code relies on is checked: fields it does not know are kept as they are."""
    if not isinstance(data, dict):
        return "", f"is {shown(data)}, not a JSON object"
    if data.get("host", host) != host:
        return "host", f"is {data['host']!r}: these are the records of another host"
    for table in ("resources", "guests"):
        if table not in data:
            return table, "is missing"
        if not isinstance(data[table], dict):
            return table, f"is {shown(data[table])}, not an object keyed by name"
    for key, record in data["resources"].items():
        wrong = _fields_problem(record, _RESOURCE_FIELDS, ("resources", key))
        if wrong:
            return wrong
    for name, entry in data["guests"].items():
        wrong = _fields_problem(entry, _GUEST_FIELDS, ("guests", name))
        if wrong:
            return wrong
    return None


def shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fields_problem(record: object, fields: tuple[Field, ...], where: tuple[str, ...],
                    ) -> tuple[str, str] | None:
    if not isinstance(record, dict):
        return _key(*where), f"is {shown(record)}, not an object"
    for name, good, what, required in fields:
        if name not in record:
            if required:
                return _key(*where, name), "is missing"
        elif not good(record[name]):
            return _key(*where, name), f"is {shown(record[name])}, not {what}"
    return None
