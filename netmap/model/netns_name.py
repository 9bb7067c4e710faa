"""The rule for a network namespace's name, apart from the loader: `netmap discover --netns`
checks it without importing the TOML schema (start-up is most of a discover's run)."""

from __future__ import annotations

NAME_MAX = 255  # bytes in a file name: /run/netns/NAME, netmap's state file HOST.json


def netns_problem(name: str) -> str | None:
    """Why `name` cannot be a network namespace name, or None: the rules of `ip netns add`
    (a file name in /run/netns; a path would let a mapping point realize at any process's
    namespace, and "" at this machine's own), plus no control characters."""
    if not name:
        return "is empty; an empty netns would mean this machine's own namespace"
    if name in (".", ".."):
        return f"{name!r} is not a name"
    if "/" in name:
        return f"{name!r} is a path; netns takes the name of a namespace in /run/netns"
    if len(name.encode()) > NAME_MAX:
        return f"has {len(name.encode())} bytes; a namespace name has at most {NAME_MAX}"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return f"{name!r} holds control characters"
    return None
