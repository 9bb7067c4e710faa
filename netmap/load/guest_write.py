"""Set `host` in a guest file's [guest] table, changing that one line and nothing else
(comments, order and the rest of the file stay the operator's)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from netmap.errors import InputError

_TABLE = re.compile(r"^\s*\[\s*([^\]\s]+)\s*\]\s*(#.*)?$")
_HOST = re.compile(r"^(\s*host\s*=\s*)(\"[^\"]*\"|'[^']*')(.*)$")
_NAME = re.compile(r"^\s*name\s*=")


def set_guest_host(path: str | Path, host: str) -> None:
    """Rewrite `path` so its [guest] table says host = "HOST"; written atomically."""
    path = Path(path)
    if path.suffix != ".toml":
        raise InputError("is a libvirt domain XML, which names no host netmap can set",
                         file=path, fix="record the host in a guest TOML file instead")
    lines = path.read_text().splitlines(keepends=True)
    section, name_at, done = None, None, False
    for index, line in enumerate(lines):
        table = _TABLE.match(line)
        if table:
            section = table.group(1)
            continue
        if section != "guest":
            continue
        found = _HOST.match(line.rstrip("\n"))
        if found:
            ending = line[len(line.rstrip("\n")):]
            lines[index] = f'{found.group(1)}"{host}"{found.group(3)}{ending}'
            done = True
            break
        if _NAME.match(line):
            name_at = index
    if not done:
        if name_at is None:
            raise InputError("has no [guest] table with a name", file=path, key="guest",
                             fix='start the file with [guest] and name = "..."')
        lines.insert(name_at + 1, f'host = "{host}"\n')
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write("".join(lines))
        os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
