"""`netmap qemu-helper`: the QEMU bridge helper as a netmap command.

Same protocol and options as the netmap-qemu-helper console script, for a helper string
such as helper="/usr/bin/netmap qemu-helper --host host-a" (QEMU runs a helper string that
holds a space through sh -c, appending --use-vnet --fd=N --br=NAME).
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from netmap.qemu.helper import add_arguments

    add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from netmap.qemu.helper import request_from
    from netmap.qemu.helper import run as run_helper

    return run_helper(request_from(args))


COMMANDS = {"qemu-helper": (configure, run)}
