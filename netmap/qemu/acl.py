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
from dataclasses import dataclass, field
from pathlib import Path

from netmap.errors import EXIT_INCOMPATIBLE, InputError, NetmapError

DEFAULT_ACL = Path("/etc/netmap/qemu-helper.conf")
ACL_ENV = "NETMAP_QEMU_ACL"
ALL = "all"
MAX_INCLUDE_DEPTH = 16  # deeper than any sane layout; stops runaway include chains


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


def _lines(text: str, file: str):
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
    where = {"file": include_line[0], "line": include_line[1]} if include_line else {}
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
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"ACL {path} is not a regular file", **where,
                             fix="point at a file of allow/deny/include lines")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        fix = (f"create it with a line 'allow NETWORK' per network QEMU guests may use, "
               f"or set ${ACL_ENV}") if not include_line else "fix or remove the include"
        raise InputError(f"ACL file {path} does not exist", **where, fix=fix) from err
    except PermissionError as err:
        raise InputError(f"ACL file {path} is not readable: {err.strerror}", **where,
                         fix="make it readable by the user the helper runs as") from err
    except UnicodeDecodeError as err:
        raise InputError(f"ACL file {path} is not UTF-8 text", **where,
                         fix="write the ACL as plain text") from err
    except OSError as err:
        raise InputError(f"cannot read ACL file {path}: {err.strerror or err}", **where,
                         fix="check the path") from err
    # The helper runs with root's rights on behalf of any user who may start QEMU: an ACL
    # that anyone can edit would let anyone open every network (the sudoers rule).
    if info.st_mode & stat.S_IWOTH:
        raise InputError(f"ACL file {path} is writable by everyone; refusing to trust it",
                         **where, fix=f"chmod o-w {path}")
    files.append(str(path))
    for number, action, arg in _lines(text, str(path)):
        if action == "include":
            target = Path(arg) if os.path.isabs(arg) else path.parent / arg
            _read(target, rules, files, (*chain, real), (str(path), number))
        else:
            rules.append(Rule(action, arg, str(path), number))
