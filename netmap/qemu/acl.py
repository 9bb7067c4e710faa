"""Which logical networks the QEMU helper serves: an ACL with qemu-bridge-helper's semantics.

The file reads like QEMU's /etc/qemu/bridge.conf, with logical network names instead of
bridge names:

    # comment
    allow prod          # serve the logical network "prod"
    allow all           # serve every network ...
    deny storage        # ... except this one: a deny always wins, wherever it stands
    include /etc/netmap/qemu-helper.d/tenants.conf

Nothing is allowed unless a rule allows it (default deny), and a matching `deny` wins over
any `allow`, whatever the order or the file. Unlike QEMU, a relative `include` is read
relative to the including file (QEMU uses the helper's working directory, which nobody
controls), and an include loop is an error instead of unbounded recursion.

Pure: reads files, creates nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netmap.errors import EXIT_INCOMPATIBLE, InputError, NetmapError

DEFAULT_ACL = Path("/etc/netmap/qemu-helper.conf")
ACL_ENV = "NETMAP_QEMU_ACL"
ALL = "all"
MAX_INCLUDE_DEPTH = 16  # deeper than any sane layout; stops runaway include chains
MAX_ACL_BYTES = 1024 * 1024  # an ACL is a few lines; a bigger "file" is a mistake or /dev/zero


class AccessDenied(NetmapError):
    """The ACL does not let the helper serve this network (exit 1: a refusal, not a typo)."""

    exit_code = EXIT_INCOMPATIBLE


@dataclass(frozen=True)
class Rule:
    action: str  # "allow" | "deny"
    name: str  # a logical network name, or "all"
    file: str
    line: int

    def matches(self, network: str) -> bool:
        return self.name in (ALL, network)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.action} {self.name}"


@dataclass(frozen=True)
class Acl:
    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = field(default=())  # every file read, the top one first

    def decide(self, network: str) -> tuple[bool, Rule | None]:
        """(allowed, the rule that decided); deny wins, then allow, else default deny."""
        deny = next((r for r in self.rules if r.action == "deny" and r.matches(network)), None)
        if deny is not None:
            return False, deny
        allow = next((r for r in self.rules if r.action == "allow" and r.matches(network)), None)
        return allow is not None, allow

    def check(self, network: str) -> Rule:
        """The rule that allows `network`, or AccessDenied saying why not and what to do."""
        allowed, rule = self.decide(network)
        if allowed:
            assert rule is not None
            return rule
        top = self.files[0] if self.files else str(DEFAULT_ACL)
        if rule is not None:
            raise AccessDenied(f"the QEMU helper ACL denies network {network!r} ({rule})",
                               fix=f"remove that rule if guests may use {network!r}")
        raise AccessDenied(f"the QEMU helper ACL {top} does not allow network {network!r} "
                           "(nothing is allowed unless a rule allows it)",
                           fix=f"add the line 'allow {network}' to {top}")


def acl_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--acl PATH, else $NETMAP_QEMU_ACL, else /etc/netmap/qemu-helper.conf."""
    chosen = explicit or os.environ.get(ACL_ENV)
    return Path(chosen) if chosen else DEFAULT_ACL


def load_acl(path: str | os.PathLike[str]) -> Acl:
    rules: list[Rule] = []
    files: list[str] = []
    _read(Path(path), rules, files, chain=(), include_line=None)
    return Acl(tuple(rules), tuple(files))


def parse_acl(text: str, file: str = "<acl>") -> Acl:
    """The rules of one file's text; `include` is not allowed here (no file to resolve from)."""
    rules: list[Rule] = []
    for number, action, arg in _lines(text, file):
        if action == "include":
            raise InputError("include is not possible in ACL text without a file",
                             file=file, line=number, fix="load the ACL with load_acl(path)")
        rules.append(Rule(action, arg, file, number))
    return Acl(tuple(rules), (file,))


def _lines(text: str, file: str) -> Iterator[tuple[int, str, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        action = words[0]
        if action not in ("allow", "deny", "include"):
            raise InputError(f"unknown ACL command {action!r}", file=file, line=number,
                             fix="each line is 'allow NAME|all', 'deny NAME|all' or "
                             "'include PATH' (a '#' starts a comment)")
        if len(words) != 2:
            raise InputError(f"{action!r} takes exactly one argument, got {len(words) - 1}",
                             file=file, line=number,
                             fix=f"write '{action} NAME'" if action != "include"
                             else "write 'include PATH' (no spaces in PATH)")
        yield number, action, words[1]


def _read(path: Path, rules: list[Rule], files: list[str], chain: tuple[Path, ...],
          include_line: tuple[str, int] | None) -> None:
    where: dict[str, Any] = ({"file": include_line[0], "line": include_line[1]}
                             if include_line else {})  # InputError's file= and line=
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop
        raise InputError(f"cannot resolve ACL file {path}: {err}", **where,
                         fix="point at an existing file") from err
    if real in chain:
        loop = " -> ".join(str(p) for p in (*chain, real))
        raise InputError(f"ACL include loop: {loop}", **where,
                         fix="remove the include that leads back to a file already read")
    if len(chain) >= MAX_INCLUDE_DEPTH:
        raise InputError(f"ACL includes nest deeper than {MAX_INCLUDE_DEPTH} files", **where,
                         fix="flatten the include chain")
    text = _read_trusted(path, real, where, is_include=include_line is not None)
    files.append(str(path))
    for number, action, arg in _lines(text, str(path)):
        if action == "include":
            target = Path(arg) if os.path.isabs(arg) else path.parent / arg
            _read(target, rules, files, (*chain, real), (str(path), number))
        else:
            rules.append(Rule(action, arg, str(path), number))


def _read_trusted(path: Path, real: Path, where: dict[str, Any], *, is_include: bool) -> str:
    """The text of one ACL file, after making sure only a trusted user could have written it.

    The helper runs with root's rights on behalf of anyone who may start QEMU, so an ACL
    that someone else can change lets them open every network. Trusted, as sshd's
    StrictModes and sudo judge it: owned by root (or by the user the helper runs as), not
    writable by group or others, and so is every directory above it, else the file could
    be swapped. Opened without blocking (a FIFO must not hang the helper) and read only if
    it is a regular file, up to MAX_ACL_BYTES.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError as err:
        fix = (f"create it with a line 'allow NETWORK' per network QEMU guests may use, "
               f"or set ${ACL_ENV}") if not is_include else "fix or remove the include"
        raise InputError(f"ACL file {path} does not exist", **where, fix=fix) from err
    except PermissionError as err:
        raise InputError(f"ACL file {path} is not readable: {err.strerror}", **where,
                         fix="make it readable by the user the helper runs as") from err
    except OSError as err:
        raise InputError(f"cannot read ACL file {path}: {err.strerror or err}", **where,
                         fix="check the path") from err
    try:
        info = os.fstat(fd)  # the file we read, not whatever the path names a moment later
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"ACL {path} is not a regular file", **where,
                             fix="point at a file of allow/deny/include lines")
        _require_trusted(f"ACL file {path}", info, path, where)
        for directory in _directories(path, real):
            try:
                dir_info = os.stat(directory)
            except OSError as err:
                raise InputError(f"cannot check directory {directory} of ACL file {path}: "
                                 f"{err.strerror or err}", **where, fix="check the path"
                                 ) from err
            _require_trusted(f"directory {directory}, which holds ACL file {path},",
                             dir_info, directory, where)
        data = _read_at_most(fd, MAX_ACL_BYTES + 1)
    except OSError as err:
        raise InputError(f"cannot read ACL file {path}: {err.strerror or err}", **where,
                         fix="check the path") from err
    finally:
        os.close(fd)
    if len(data) > MAX_ACL_BYTES:
        raise InputError(f"ACL file {path} is larger than {MAX_ACL_BYTES // 1024} KiB",
                         **where, fix="an ACL holds a few allow/deny/include lines; "
                         "point at the right file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"ACL file {path} is not UTF-8 text", **where,
                         fix="write the ACL as plain text") from err


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _directories(path: Path, real: Path) -> list[Path]:
    """Every directory from / down to the file, both where the path's last link lives and
    where the file really is: whoever can write to either can swap what is read."""
    chains: list[Path] = []
    for leaf_dir in (Path(os.path.realpath(os.path.abspath(path.parent))), real.parent):
        for directory in (*reversed(leaf_dir.parents), leaf_dir):
            if directory not in chains:
                chains.append(directory)
    return chains


def _require_trusted(what: str, info: os.stat_result, path: Path, where: dict[str, Any]) -> None:
    trusted_owners = {0, os.geteuid()}
    if info.st_uid not in trusted_owners:
        raise InputError(f"{what} is owned by uid {info.st_uid}, not by root; refusing to "
                         "trust it", **where, fix=f"chown root {path}")
    writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    # A sticky directory (/tmp) lets others add entries but not rename or remove one they
    # do not own, so a trusted entry inside it cannot be swapped.
    if writable and not (stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX):
        who = "everyone" if info.st_mode & stat.S_IWOTH else "its group"
        raise InputError(f"{what} is writable by {who} (mode "
                         f"{stat.S_IMODE(info.st_mode):04o}); refusing to trust it", **where,
                         fix=f"chmod go-w {path}")
