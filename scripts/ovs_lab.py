#!/usr/bin/env python3
"""A private Open vSwitch in lab host namespaces, for README's walkthrough of the ovs mode.

    python3 scripts/ovs_lab.py up --mappings DIR --prefix P [--network NET] \\
        [--guest G@HOST] HOST...

with DIR a copy of the mappings: builds the lab for those hosts (scripts/lab: a host's
namespace is P-HOST), starts an ovsdb-server and an ovs-vswitchd for each host (tests/
ovs_lab.py: a database in /tmp/P-ovs/HOST, ovs-vswitchd inside the host's namespace, the
userspace datapath, which needs only /dev/net/tun), and writes into DIR each host's `netns`
and `ovsdb`, and NET (default prod) rebound to `mode = "ovs"` on the uplink it had, with
`datapath_type = "netdev"`. A binding of another network on that uplink in another mode
(a vxlan underlay, a macvtap's lower device) is removed from the copy: an OVS port cannot
be both (the loader refuses it). --guest writes a guest file with one NIC on NET. Prints
the ovs-vsctl command that looks at each host's OVS; on Ctrl-C stops the daemons and
removes the lab. The machine's own Open vSwitch, if any, is not used or touched.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from libvirt_lab import lab_guest, set_host_key  # noqa: E402

from netmap.errors import InputError  # noqa: E402
from netmap.lab import build_lab, host_namespace, teardown_lab  # noqa: E402
from netmap.load import load_fleet  # noqa: E402
from netmap.model.fleet import Fleet  # noqa: E402
from tests.ovs_lab import OvsInstance, missing, start_ovs  # noqa: E402

_TABLE = re.compile(r"^\s*\[")


def ovs_directory(prefix: str) -> Path:
    """Where each host's database and sockets live: short, since a unix socket's path has
    at most 107 bytes, and fixed, so that README can name it."""
    return Path("/tmp") / f"{prefix}-ovs"


def _table_span(lines: list[str], header: str) -> tuple[int, int] | None:
    """The lines of TOML table `header` (its header line to the next table's)."""
    start = next((i for i, line in enumerate(lines) if line.strip() == header), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if _TABLE.match(lines[i])),
               len(lines))
    return start, end


def rebind_to_ovs(path: Path, network: str, uplink: str, bridge: str | None,
                  drop: list[str]) -> None:
    """Rewrite [networks.NETWORK] as an ovs binding on `uplink` (comments in it stay) and
    remove the tables of the networks in `drop`; the rest of the file stays as it was."""
    lines = path.read_text().splitlines(keepends=True)
    span = _table_span(lines, f"[networks.{network}]")
    if span is None:
        raise InputError(f"no [networks.{network}] table", file=str(path),
                         fix=f"bind {network} on this host first, or choose --network")
    start, end = span
    comments = [line for line in lines[start + 1:end] if line.lstrip().startswith("#")]
    table = [lines[start], *comments, 'mode = "ovs"\n', f'uplink = "{uplink}"\n',
             *([f'bridge = "{bridge}"\n'] if bridge else []), 'datapath_type = "netdev"\n']
    if end < len(lines):
        table.append("\n")
    lines[start:end] = table
    for other in drop:
        found = _table_span(lines, f"[networks.{other}]")
        if found is not None:
            del lines[found[0]:found[1]]
    path.write_text("".join(lines).rstrip("\n") + "\n")


def prepare(fleet: Fleet, mappings: Path, prefix: str, network: str,
            hosts: list[str]) -> list[str]:
    """Write each host's netns, ovsdb and ovs binding into the copy; what was done, to say."""
    said = []
    for host in hosts:
        binding = fleet.hosts[host].bindings[network]
        path = mappings / "hosts" / f"{host}.toml"
        drop = sorted(name for name, other in fleet.hosts[host].bindings.items()
                      if name != network and other.uplink == binding.uplink
                      and other.mode != "ovs")
        rebind_to_ovs(path, network, binding.uplink, binding.bridge, drop)
        set_host_key(path, "netns", host_namespace(prefix, host))
        set_host_key(path, "ovsdb", f"unix:{ovs_directory(prefix) / host / 'db.sock'}")
        said.append(f"{path}: {network} is mode ovs on {binding.uplink} (was "
                    f"{binding.mode}); netns and ovsdb set")
        for name in drop:
            mode = fleet.hosts[host].bindings[name].mode
            said.append(f"{path}: removed [networks.{name}] ({mode} on {binding.uplink}): "
                        "an OVS port cannot also serve it")
    return said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up"])
    parser.add_argument("hosts", nargs="+")
    parser.add_argument("--mappings", required=True,
                        help="a copy of the mappings: up writes each host's netns, ovsdb and "
                        "ovs binding into it, and the --guest files")
    parser.add_argument("--prefix", default="nm-ovs")
    parser.add_argument("--network", default="prod",
                        help="the network rebound to mode ovs on its uplink (default prod)")
    parser.add_argument("--guest", action="append", default=[], metavar="NAME@HOST",
                        help="write a guest file for NAME on HOST with one NIC on --network "
                        "(repeat)")
    args = parser.parse_args(argv)
    mappings = Path(args.mappings).resolve()
    if mappings == (REPO / "mappings").resolve():
        print("ovs_lab: up writes into the mappings; copy them first: "
              "cp -r mappings /tmp/fleet && rm /tmp/fleet/guests/*", file=sys.stderr)
        return 2
    problem = missing()
    if problem:
        print(f"ovs_lab: {problem}", file=sys.stderr)
        return 2
    guests = [item.partition("@") for item in args.guest]
    try:
        fleet = load_fleet(mappings)
        for name, at, host in guests:
            if not name or not at or host not in args.hosts:
                raise InputError(f"--guest {name}{at}{host}: not NAME@HOST with HOST one of "
                                 f"{', '.join(args.hosts)}", key="--guest",
                                 fix="write it as g1@host-a")
        for host in args.hosts:
            if host not in fleet.hosts or args.network not in fleet.hosts[host].bindings:
                raise InputError(f"{host} has no binding of {args.network}",
                                 file=str(mappings / "hosts"),
                                 fix="name hosts that bind it, or choose --network")
        directory = ovs_directory(args.prefix)
        if directory.exists():
            raise InputError(f"{directory} exists: a lab with prefix {args.prefix} runs, or "
                             "one was killed", key="--prefix",
                             fix=f"stop it with Ctrl-C, or remove {directory} and run "
                             f"scripts/lab down --prefix {args.prefix}")
        said = prepare(fleet, mappings, args.prefix, args.network, args.hosts)
        for number, (name, _, host) in enumerate(guests, 1):
            path = mappings / "guests" / f"{name}.toml"
            path.write_text(lab_guest(name, f"52:54:00:0b:5e:{number:02x}", host,
                                      args.network))
            said.append(f"{path}: guest {name} on {host}, one NIC on {args.network}")
        lab = build_lab(load_fleet(mappings), args.prefix, args.hosts)
    except InputError as err:
        print(f"ovs_lab: {err}", file=sys.stderr)
        return 2
    started: list[OvsInstance] = []
    try:
        for host in args.hosts:
            started.append(start_ovs(lab.hosts[host], directory / host))
        print("\n".join(said))
        for host, ovs in zip(args.hosts, started, strict=True):
            print(f"{host}: namespace {lab.hosts[host]}, "
                  f"ovs-vsctl --db={ovs.remote} show")
        print("Ctrl-C stops Open vSwitch and removes the lab", flush=True)
        # also when started in the background, which leaves SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.pause()
    except KeyboardInterrupt:
        pass
    except (OSError, TimeoutError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", None) or ""
        print(f"ovs_lab: Open vSwitch did not start: {err} {detail}".rstrip(), file=sys.stderr)
        return 3
    finally:
        for ovs in started:
            ovs.stop()
        teardown_lab(lab)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
