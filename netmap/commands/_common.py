"""What commands share: loading the fleet, choosing this host, printing a result."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from netmap.model.fleet import Fleet, Host
    from netmap.query.graph import FleetGraph


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def load(args: argparse.Namespace) -> tuple[Fleet, FleetGraph]:
    from netmap.load import load_fleet
    from netmap.query.graph import build_graph

    fleet = load_fleet(args.mappings)

    return fleet, build_graph(fleet)


def this_host(args: argparse.Namespace, fleet: Fleet) -> Host:
    """--host NAME, else $NETMAP_HOST, else the machine's hostname (netmap.load.hostid)."""
    from netmap.load.hostid import this_host as from_fleet

    return from_fleet(fleet, getattr(args, "host", None))


def print_json(data: Any, *, large: bool = False) -> None:
    """Indented for a person at a terminal; compact, UTF-8, for a program reading a pipe.
    That one is msgspec's encoder when the loader has imported it, or the answer is
    `large` (hosts-for's answer over a large fleet), which it encodes several times faster
    than the json module. For a small answer (discover, a warm `show HOST`, which parse no
    TOML) importing msgspec costs more than encoding: the json module writes the same
    bytes."""
    if sys.stdout.isatty():
        print(json.dumps(data, indent=2))
        return
    msgspec = sys.modules.get("msgspec")
    if msgspec is None and large:
        import msgspec as imported

        msgspec = imported
    if msgspec is not None:
        encoded = msgspec.json.encode(data) + b"\n"
    else:
        encoded = (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    binary = getattr(sys.stdout, "buffer", None)
    if binary is None:  # a text stream only (a test's StringIO)
        sys.stdout.write(encoded.decode())
    else:
        sys.stdout.flush()  # what was printed before comes first
        binary.write(encoded)


def console(*, soft_wrap: bool = False) -> Console:
    """Without emoji codes: a MAC such as 52:54:00:cd:00:01 holds ':cd:', which rich would
    turn into a pictogram. Data goes into rich.text.Text (or is escaped), never markup.
    NO_COLOR (no-color.org) turns off every style, not only colours (rich alone keeps bold
    and dim), and wins over FORCE_COLOR."""
    from rich.console import Console

    plain = os.environ.get("NO_COLOR", "") != ""
    return Console(highlight=False, emoji=False, soft_wrap=soft_wrap,
                   color_system=None if plain else "auto")
