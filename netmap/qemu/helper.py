"""netmap-qemu-helper: QEMU's bridge-helper protocol, for logical networks.

QEMU (net/tap.c, `-netdev bridge,br=NAME,helper=PATH`) makes a unix socketpair and execs
the helper as `PATH --use-vnet --fd=N --br=NAME` (`--use-vnet` optional); a helper string
with a space is run through `sh -c` with those arguments appended, which is how the extra
options below reach us. The helper must send one byte carrying one SCM_RIGHTS fd of a tap,
then exit 0; a non-zero exit is "bridge helper failed", exit 0 without an fd is "did not
send a file descriptor". Here NAME is a *logical network*; the helper resolves it through
this host's mapping and builds its endpoint with realize's plan for that network (the same
steps, applied through realize's transaction, recorded in the host's state as guest
qemu:IFNAME):

  bridge            a tap on the binding's bridge (the bridge, on the uplink, made if missing)
  vxlan             a tap on the VNI's bridge (vxlan device and bridge made if missing)
  ovs               a tap as an access port of the OVS bridge (tag, external_ids; bridge and
                    uplink port made if missing)
  macvtap-*         a macvtap on the uplink; its /dev/tapN fd is sent instead of a tun fd.
                    A macvtap only receives frames for its own MAC, so the guest's MAC must
                    be known: `--mac=MAC`, or `--guest=NAME` to take it from the guest's
                    mapping. QEMU accepts the fd like a tap's (libvirt does the same).
  sriov-vf          refused: a VF reaches a guest as a PCI device (vfio-pci), not an fd.

A tap goes with QEMU's last fd; a watcher left behind releases the endpoint's state record
when QEMU exits or closes the tap, as `netmap release qemu:IFNAME` would: the macvtap, the
OVS port, and the shared devices (bridge, vxlan, OVS bridge and uplink port) netmap made
that no other user needs any more.

Every check (arguments, name, ACL, mapping) runs before anything is created; a failure
after that undoes what this run created. Exit codes: 0 fd sent, 1 denied by the ACL,
2 bad arguments or mappings, 3 the kernel refused (nothing left behind).
"""

from __future__ import annotations

import argparse
import array
import os
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netmap.errors import EXIT_APPLY, EXIT_BUG, ApplyError, InputError, NetmapError
from netmap.modes import mode_of
from netmap.qemu import Endpoint, network_name_problem, plan_endpoint

if TYPE_CHECKING:
    from netmap.model.fleet import Fleet, Host
    from netmap.netlink import rtmsg

PROG = "netmap-qemu-helper"
LOCK_TIMEOUT = 30.0  # seconds; QEMU waits for the helper, a realize takes well under this


@dataclass(frozen=True)
class Request:
    """What the caller asked for: QEMU's three arguments plus the helper string's options."""

    fd: int
    network: str
    use_vnet: bool = False
    host: str | None = None
    mappings: str | None = None
    acl: str | None = None
    guest: str | None = None
    mac: str | None = None
    verbose: bool = False


class _Once(argparse.Action):
    """Refuse a repeated option: two --br= would leave it open which one the ACL saw."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None,
                 ) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice")
        setattr(namespace, self.dest, values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--use-vnet", action="store_true",
                        help="QEMU wants IFF_VNET_HDR (used when the kernel offers it)")
    parser.add_argument("--fd", type=int, action=_Once, help="the socket to send the tap fd on")
    parser.add_argument("--br", action=_Once, metavar="NETWORK",
                        help="the logical network (QEMU's br=)")
    parser.add_argument("--host", action=_Once,
                        help="this host's mapping (default: $NETMAP_HOST, then the hostname)")
    parser.add_argument("--acl", action=_Once, metavar="PATH",
                        help="ACL file (default: $NETMAP_QEMU_ACL, /etc/netmap/qemu-helper.conf)")
    parser.add_argument("--guest", action=_Once,
                        help="the guest, from the mappings: names the endpoint as realize "
                        "would and gives macvtap modes the guest's MAC")
    parser.add_argument("--mac", action=_Once, help="the guest NIC's MAC (macvtap modes)")
    parser.add_argument("--verbose", action="store_true",
                        help="say on stderr what was attached where")


def request_from(args: argparse.Namespace) -> Request:
    if args.fd is None:
        raise InputError("missing --fd=N (the unix socket QEMU passes)",
                         fix="QEMU runs the helper as: HELPER --use-vnet --fd=N --br=NETWORK")
    if args.fd < 0:  # socket.socket(fileno=-1) would raise ValueError, not say this
        raise InputError(f"--fd={args.fd} is not a file descriptor", key="--fd",
                         fix="QEMU passes the number of its end of a socketpair: --fd=N, N >= 0")
    if args.br is None:
        raise InputError("missing --br=NETWORK (the logical network)",
                         fix="use -netdev bridge,id=ID,br=NETWORK,helper=HELPER")
    problem = network_name_problem(args.br)
    if problem:
        raise InputError(problem, key="--br",
                         fix="br= names a logical network of mappings/networks.toml")
    if args.mac is not None:
        from netmap.model.nic_values import mac_problem

        mac_problem_text = mac_problem(args.mac)
        if mac_problem_text:
            raise InputError(mac_problem_text, key="--mac",
                             fix="give the MAC of the guest NIC, e.g. 52:54:00:12:34:56")
    return Request(fd=args.fd, network=args.br, use_vnet=args.use_vnet, host=args.host,
                   mappings=getattr(args, "mappings", None), acl=args.acl, guest=args.guest,
                   mac=args.mac.lower() if args.mac else None, verbose=args.verbose)


def check_socket(fd: int) -> socket.socket:
    """The caller's socket, after making sure it is one (nothing created yet)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as err:
        raise InputError(f"fd {fd} is not an open socket ({err.strerror})", key="--fd",
                         fix="only QEMU (or a caller holding the socketpair) runs the helper"
                         ) from err
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise InputError(f"fd {fd} is not a unix stream socket", key="--fd",
                         fix="QEMU passes one end of a socketpair(AF_UNIX, SOCK_STREAM)")
    return sock


def send_fd(sock: socket.socket, fd: int) -> None:
    """One byte with one SCM_RIGHTS fd: what QEMU's net/tap.c recv_fd() reads."""
    sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def peer_pid(sock: socket.socket) -> int:
    """The process at the other end: for a socketpair, the one that made it (QEMU)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)[0]


def serve(request: Request) -> Endpoint:
    """Check everything, then build the endpoint and send its fd. Raises NetmapError."""
    from netmap.qemu.acl import acl_path, load_acl

    load_acl(acl_path(request.acl)).check(request.network)
    fleet, host = load_mappings(request)
    endpoint = plan_endpoint(request, fleet, host)
    sock = check_socket(request.fd)
    try:
        attach_and_send(endpoint, sock, use_vnet=request.use_vnet)
    finally:
        sock.close()
    return endpoint


def load_mappings(request: Request) -> tuple[Fleet, Host]:
    """The mappings the request needs, and this host's. QEMU waits for the helper, so when
    no guest is named (--guest, --mac) only networks.toml and hosts/NAME.toml are read, not
    the whole fleet: what load_fleet would give for NAME when that file defines it. Any
    other case (no such file, a broken one, a name it does not define) takes the whole
    fleet, whose answer and errors are those of every other command."""
    from netmap.load import mappings_dir
    from netmap.load.hostid import host_name
    from netmap.load.parse import load_host, load_networks
    from netmap.model.fleet import Fleet

    if request.guest is None and request.mac is None:
        base = mappings_dir(request.mappings)
        name = host_name(request.host)
        path = base / "hosts" / f"{name}.toml"
        if name and "/" not in name and not name.startswith(".") and path.is_file():
            networks = load_networks(base / "networks.toml")
            try:
                host = load_host(path, networks)
            except InputError:
                host = None  # the whole fleet's load says it, as everywhere else
            if host is not None and host.name == name:
                return Fleet(networks, {name: host}, {}, (), str(base)), host
    return _whole_fleet(request)


def _whole_fleet(request: Request) -> tuple[Fleet, Host]:
    from netmap.load import load_fleet
    from netmap.load.hostid import this_host

    fleet = load_fleet(request.mappings)
    return fleet, this_host(fleet, request.host)


def attach_and_send(endpoint: Endpoint, sock: socket.socket, *, use_vnet: bool) -> None:
    """Apply the endpoint's plan as realize does (netlink/apply.realize_plan: the host lock,
    state, decide, rollback), open the fd of its tap or macvtap and send it on `sock`; then
    leave a watcher that releases the endpoint from state, as `netmap release` would, once
    QEMU is gone or has closed the tap (a hot-unplug).

    Whatever this call made is undone if any step fails, the send included.
    """
    from netmap.netlink import tapfd as k
    from netmap.netlink.apply import realize_plan

    if endpoint.host.netns:
        k.enter_netns(endpoint.host.netns)
    k.refuse_existing(endpoint.ifname)
    macvtap = mode_of(endpoint.binding).qemu_fd == "macvtap"
    opened: list[int] = []

    def hand_over(links: dict[str, rtmsg.Link]) -> None:
        if macvtap:
            k.private_sysfs()
            opened.append(k.open_macvtap(endpoint.ifname, links[endpoint.ifname].index))
        else:
            opened.append(k.open_made_tap(endpoint.ifname, vnet_hdr=use_vnet))
        try:
            send_fd(sock, opened[0])
        except OSError as err:
            raise ApplyError(f"cannot send the fd to the caller: {err.strerror}",
                             fix="the caller (QEMU) went away; nothing was kept") from err

    try:
        realize_plan(endpoint.plan, lock_timeout=LOCK_TIMEOUT, on_applied=hand_over)
    finally:
        for fd in opened:
            os.close(fd)  # QEMU has its own copy now (or none: a tap went with the rollback)
    k.release_when_gone(peer_pid(sock), endpoint.ifname, None if macvtap else endpoint.ifname,
                        sock.fileno(), lambda: _release(endpoint))


def _release(endpoint: Endpoint) -> None:
    """What `netmap release` does for the endpoint's state record: its tap or macvtap, its
    OVS port, and the shared devices (bridge, vxlan, OVS bridge and uplink port) it was the
    last user of."""
    from netmap.netlink.apply import release_guest

    # no QEMU waits for this one: a realize holding the host's lock is waited out
    release_guest(endpoint.host.name, endpoint.owner, None, lock_timeout=LOCK_TIMEOUT * 4)


def describe(endpoint: Endpoint) -> str:
    where = (f"bridge {endpoint.bridge}" if endpoint.bridge else
             f"uplink {endpoint.binding.uplink} ({endpoint.binding.mode})")
    netns = f", netns {endpoint.host.netns}" if endpoint.host.netns else ""
    return (f"network {endpoint.network.name}: {endpoint.ifname} on {where}, MTU "
            f"{endpoint.mtu} (host {endpoint.host.name}{netns})")


def run(request: Request) -> int:
    endpoint = serve(request)
    if request.verbose:
        print(f"{PROG}: {describe(endpoint)}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--mappings", metavar="DIR",
                        help="mappings directory (default: $NETMAP_MAPPINGS, /etc/netmap)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        return run(request_from(args))
    except NetmapError as err:
        if args.debug:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # the kernel refused something no step expected; rolled back
        if args.debug:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_APPLY
    except Exception as err:  # never a traceback at QEMU's console; the message says what
        if args.debug:
            raise
        print(f"{PROG}: error: internal error: {type(err).__name__}: {err}; this is a bug "
              "in netmap, rerun with --debug and report it", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    raise SystemExit(main())

