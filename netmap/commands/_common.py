"""What commands share: loading the fleet, choosing this host, printing a result."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import networkx as nx
    from rich.console import Console

    from netmap.model import Fleet, Host


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


# Below this many host and guest files, a cold load costs less than reading a cache would.
CACHE_MIN_FILES = 500


def load_fleet_for_cli(args: argparse.Namespace, *, lazy: bool = False,
                       placing: str | None = None,
                       imports: str | None = None) -> Fleet:
    """The fleet, through the cache (netmap/cache.py) when the mappings are large; lazy:
    hosts are unpickled when used (cache.LazyHosts); placing: the guest a placement query
    is for (the parsing child sends that guest's host at once); imports: the module the
    command needs next, imported while a parsing child finishes (networkx takes 70 ms:
    cache.load_fleet_cached's prepare)."""
    from netmap.load import fleet_file_names, load_fleet, mappings_dir

    base = mappings_dir(args.mappings)
    files = fleet_file_names(base)
    if len(files[0]) + len(files[1]) < CACHE_MIN_FILES:
        return load_fleet(base)
    from netmap.cache import load_fleet_cached
    from netmap.finish import later
    from netmap.gcpause import gc_paused

    # the loaded fleet lives until exit: keep the collector off its objects
    with gc_paused(freeze=True):
        # an updated cache is written behind, once the command is done (see load_fleet_cached)
        return load_fleet_cached(base, write_behind=later, parallel=True, lazy=lazy,
                                 placing=placing, files=files,
                                 prepare=None if imports is None
                                 else lambda: importlib.import_module(imports))


def load(args: argparse.Namespace) -> tuple[Fleet, nx.DiGraph]:
    fleet = load_fleet_for_cli(args, imports="netmap.graph")
    from netmap.graph import build_graph

    return fleet, build_graph(fleet)


def this_host(args: argparse.Namespace, fleet: Fleet) -> Host:
    """--host NAME, else $NETMAP_HOST, else the machine's hostname (netmap.hostid)."""
    from netmap.hostid import this_host as from_fleet

    return from_fleet(fleet, getattr(args, "host", None))


def print_json(data: Any) -> None:
    """Indented for a person at a terminal; compact, UTF-8, for a program reading a pipe.
    That one is msgspec's encoder when the loader has imported it: hosts-for's answer for
    10k hosts (4 MB) takes it 6 ms, the json module's C encoder 25 ms. A command that loads
    no mappings (discover) would spend more importing msgspec than encoding: the json
    module writes the same bytes."""
    if sys.stdout.isatty():
        print(json.dumps(data, indent=2))
        return
    msgspec = sys.modules.get("msgspec")
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
