"""The command line: parse, call, render, exit code. Thin, and lazy.

Each command lives in a module under netmap/commands/ that is imported only when that
command runs, so `--help`, `--version` and hooks that pass through start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from netmap import __version__
from netmap.errors import EXIT_INPUT, NetmapError

# command -> (module under netmap.commands, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "show": ("fleet", "the fleet as a tree: hosts, uplinks, networks, guests"),
    "check": ("fleet", "can a host realize the same topology for a guest?"),
    "hosts-for": ("fleet", "every host that can take a guest, best first"),
    "diff": ("fleet", "how two hosts realize each logical network, side by side"),
    "plan": ("realize", "the steps realize would run, touching nothing"),
    "realize": ("realize", "build a guest's endpoints on this host through netlink"),
    "release": ("realize", "remove what netmap built for a guest on this host"),
    "discover": ("discover", "inventory of the live host (netlink, sysfs)"),
    "drift": ("discover", "declared mapping against the live host"),
    "drain": ("drain", "plan the evacuation of a whole host"),
    "import": ("libvirt", "read a libvirt domain XML as a netmap guest"),
    "libvirt-hook": ("libvirt", "libvirt qemu hook: rewrite or refuse a migration"),
    "libvirt-networks": ("libvirt", "libvirt <network> definitions for a host"),
    "qemu-helper": ("qemu", "QEMU bridge helper for logical networks"),
}


def _top_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="netmap",
        description="Migration-aware networking for virtual machines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{listing}\n\n'netmap COMMAND --help' shows a command's options.\n"
        "exit codes: 0 ok, 1 incompatible or drift, 2 bad input or usage, "
        "3 apply failed (rolled back)",
    )
    parser.add_argument("--version", action="version", version=f"netmap {__version__}")
    _add_common(parser)
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mappings", metavar="DIR", default=argparse.SUPPRESS,
                        help="mappings directory (default: $NETMAP_MAPPINGS, /etc/netmap, "
                        "./mappings)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")


def command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module = importlib.import_module(f"netmap.commands.{COMMANDS[name][0]}")
    configure, run = module.COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"netmap {name}", description=COMMANDS[name][1])
    _add_common(parser)
    configure(parser)
    return parser, run


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser().parse_args(argv)
    parser, run = command_parser(top.command)
    args = parser.parse_args(top.args)
    args.command = top.command
    for key in ("mappings", "debug"):
        if not hasattr(args, key):
            setattr(args, key, getattr(top, key, None))
    try:
        return run(args)
    except NetmapError as err:
        if args.debug:
            raise
        _report(err, getattr(args, "json", False))
        return err.exit_code
    except KeyboardInterrupt:
        print("netmap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_INPUT


def run() -> NoReturn:
    """The console script: main(), then a quick exit (netmap/finish.py)."""
    from netmap.finish import exit_now

    exit_now(main())


def _report(err: NetmapError, as_json: bool) -> None:
    print(f"netmap: error: {err}", file=sys.stderr)
    if as_json:
        import json

        print(json.dumps(err.as_dict(), indent=2))
