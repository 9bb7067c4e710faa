"""What commands share: loading the fleet, choosing this host, printing a result."""

from __future__ import annotations

import argparse
import json
import os
import socket
from typing import TYPE_CHECKING, Any

from netmap.errors import InputError

if TYPE_CHECKING:
    import networkx as nx

    from netmap.model import Fleet, Host


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def load(args: argparse.Namespace) -> tuple[Fleet, nx.DiGraph]:
    from netmap.graph import build_graph
    from netmap.load import load_fleet

    fleet = load_fleet(args.mappings)
    return fleet, build_graph(fleet)


def this_host(args: argparse.Namespace, fleet: Fleet) -> Host:
    """--host NAME, else $NETMAP_HOST, else the machine's hostname (DESIGN.md)."""
    from netmap.load import require_host

    name = getattr(args, "host", None) or os.environ.get("NETMAP_HOST") or socket.gethostname()
    try:
        return require_host(fleet, name)
    except InputError as err:
        if getattr(args, "host", None) or os.environ.get("NETMAP_HOST"):
            raise
        raise InputError(f"this machine's hostname {name!r} has no mapping",
                         fix="pass --host NAME or set $NETMAP_HOST") from err


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def console():  # -> rich.console.Console
    from rich.console import Console

    return Console(highlight=False)
