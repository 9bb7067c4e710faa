"""The command line: parse, call, render, exit code. Thin, and lazy.

Each command lives in a module under netmap/commands/ that is imported only when that
command runs, so `--help`, `--version` and hooks that pass through start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from netmap import __version__
from netmap.errors import EXIT_BUG, EXIT_INPUT, EXIT_OK, NetmapError

# a command's run(args): its exit code
RunCommand = Callable[[argparse.Namespace], int]
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
    "drain": ("drain", "plan the evacuation of a whole host (--execute: through libvirt)"),
    "migrate": ("migrate", "live-migrate one guest to a host through libvirt"),
    "locate": ("locate", "where each guest runs, as libvirt on every host says"),
    "fleet": ("fleetwide", "discover / drift on every host of an Ansible inventory"),
    "import": ("libvirt", "read a libvirt domain XML as a netmap guest"),
    "libvirt-hook": ("libvirt", "libvirt qemu hook: rewrite or refuse a migration"),
    "libvirt-networks": ("libvirt", "libvirt <network> definitions for a host"),
    "qemu-helper": ("qemu", "QEMU bridge helper for logical networks"),
}


EXIT_CODES = ("exit codes: 0 ok, 1 incompatible or drift, 2 bad input or usage (or output that\n"
              "cannot be written), 3 apply failed (rolled back), 4 a bug in netmap")


def _top_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="netmap",
        usage="netmap [-h] [--version] [--mappings DIR] [--debug] COMMAND [ARGS...]",
        description="Migration-aware networking for virtual machines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{listing}\n\n'netmap COMMAND --help' shows a command's options.\n"
        f"{EXIT_CODES}",
    )
    parser.add_argument("--version", action="version", version=f"netmap {__version__}")
    _add_common(parser)
    # checked here, not by argparse: a mistyped command gets a did-you-mean, a missing one
    # the list of commands
    parser.add_argument("command", nargs="?", metavar="COMMAND",
                        help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _require_command(parser: argparse.ArgumentParser, name: str | None) -> str:
    if name in COMMANDS:
        return name
    if name is None:
        parser.print_help(sys.stderr)
        parser.exit(EXIT_INPUT, "\nnetmap: error: name a COMMAND (listed above)\n")
    import difflib

    close = difflib.get_close_matches(name, COMMANDS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "'netmap --help' lists the commands"
    parser.print_usage(sys.stderr)
    parser.exit(EXIT_INPUT, f"netmap: error: unknown command {name!r}; {hint}\n")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mappings", metavar="DIR", default=argparse.SUPPRESS,
                        help="mappings directory (default: $NETMAP_MAPPINGS, /etc/netmap, "
                        "./mappings)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")


def command_parser(name: str) -> tuple[argparse.ArgumentParser, RunCommand]:
    module = importlib.import_module(f"netmap.commands.{COMMANDS[name][0]}")
    configure, run = module.COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"netmap {name}", description=COMMANDS[name][1])
    _add_common(parser)
    configure(parser)
    return parser, run


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. Usage errors, --help and --version raise SystemExit
    as argparse does. stdout is guarded meanwhile (netmap/support/output.py): a reader that went
    away, a full disk or an encoding without netmap's symbols never ends in a traceback."""
    from netmap.support.output import guarded_stdout

    with guarded_stdout() as out:
        try:
            code = _main(list(sys.argv[1:] if argv is None else argv))
        except SystemExit as done:
            raise SystemExit(_finish(_exit_code(done), out.error)) from None
        return _finish(code, out.error)


def _main(argv: list[str]) -> int:
    top_parser = _top_parser()
    top = top_parser.parse_args(argv)
    name = _require_command(top_parser, top.command)
    parser, run = command_parser(name)
    args = parser.parse_args(top.args)
    args.command = name
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
        _say("netmap: interrupted")
        return 130
    except Exception as err:
        if args.debug:
            raise
        _say(f"netmap: error: internal error: {type(err).__name__}: {err}\n"
             "  this is a bug in netmap; rerun with --debug to see where it happened, "
             "and report it")
        return EXIT_BUG


def _exit_code(done: SystemExit) -> int:
    if done.code is None:
        return EXIT_OK
    return done.code if isinstance(done.code, int) else EXIT_INPUT


def _finish(code: int, error: OSError | None) -> int:
    """The exit code once stdout's fate is known (netmap/support/output.py): a reader that went
    away changes nothing; output that could not be written is an error, unless the
    command already failed for a graver reason."""
    from netmap.support.output import is_closed_pipe

    if error is None or is_closed_pipe(error):
        return code
    _say(f"netmap: error: cannot write the output ({error.strerror or error}); what was "
         f"printed is incomplete (the command itself ended with exit code {code})")
    return code if code > EXIT_INPUT else EXIT_INPUT


def run() -> NoReturn:
    """The console script (and `python -m netmap`): main(), then a quick exit
    (netmap/support/finish.py). Without the cyclic collector: a command builds objects (a whole
    fleet: a million) that all live until it ends, and the collector would walk them again
    and again for nothing; the exit frees everything at once."""
    import gc

    from netmap.support.finish import exit_now

    gc.disable()
    exit_now(main())


def _say(message: str) -> None:
    """A line on stderr, which may itself be closed or full: then there is no one to tell."""
    with contextlib.suppress(OSError, ValueError):
        print(message, file=sys.stderr)


def _report(err: NetmapError, as_json: bool) -> None:
    _say(f"netmap: error: {err}")
    if as_json:
        import json

        print(json.dumps(err.as_dict(), indent=2))
