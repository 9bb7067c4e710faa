"""netmap-qemu-helper: QEMU's bridge-helper protocol, for logical networks.

QEMU (net/tap.c, `-netdev bridge,br=NAME,helper=PATH`) makes a unix socketpair and execs
the helper as `PATH --use-vnet --fd=N --br=NAME` (`--use-vnet` optional); a helper string
with a space is run through `sh -c` with those arguments appended, which is how the extra
options below reach us. The helper must send one byte carrying one SCM_RIGHTS fd of a tap,
then exit 0; a non-zero exit is "bridge helper failed", exit 0 without an fd is "did not
send a file descriptor". Here NAME is a *logical network*; the helper resolves it through
this host's mapping and builds its endpoint as the binding says:

  bridge            a tap on the binding's bridge (the bridge, on the uplink, made if missing)
  vxlan             a tap on the VNI's bridge (vxlan device and bridge made if missing)
  macvtap-*         a macvtap on the uplink; its /dev/tapN fd is sent instead of a tun fd.
                    A macvtap only receives frames for its own MAC, so the guest's MAC must
                    be known: `--mac=MAC`, or `--guest=NAME` to take it from the guest's
                    mapping. QEMU accepts the fd like a tap's (libvirt does the same).
                    A macvtap outlives its fds, so a watcher removes it when QEMU exits.
  sriov-vf          refused: a VF reaches a guest as a PCI device (vfio-pci), not an fd.

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
    from netmap.netlink import rtnl

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
    from netmap.state import host_lock

    load_acl(acl_path(request.acl)).check(request.network)
    fleet, host = load_mappings(request)
    endpoint = plan_endpoint(request, fleet, host)
    sock = check_socket(request.fd)
    try:
        # realize's per-host lock: a release deleting the bridge, or another helper making
        # it, never interleaves with this attach
        with host_lock(host.name, timeout=LOCK_TIMEOUT):
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
    """Build `endpoint` in the host's namespace, send its fd on `sock`, keep nothing open.

    Whatever this call created is removed again if any step fails, the send included.
    """
    from netmap.netlink import rtnl
    from netmap.netlink import tapfd as k

    if endpoint.host.netns:
        k.enter_netns(endpoint.host.netns)
    created: list[str] = []  # links this run made, oldest first
    fd = -1
    macvtap = mode_of(endpoint.binding).qemu_fd == "macvtap"
    ovs = mode_of(endpoint.binding).qemu_fd == "ovs-tap"
    ovs_port = False
    with rtnl.Rtnl() as kernel:
        try:
            if kernel.get(endpoint.ifname) is not None:
                raise ApplyError(f"interface {endpoint.ifname} already exists",
                                 fix="it was realized already: give QEMU -netdev tap,"
                                 f"ifname={endpoint.ifname},script=no,downscript=no instead")
            if macvtap:
                fd = _open_macvtap(kernel, endpoint, created)
            elif ovs:
                vnet = use_vnet and bool(k.tun_features() & k.IFF_VNET_HDR)
                fd = k.open_tap(endpoint.ifname, vnet_hdr=vnet)
                mac = _host_side_mac(endpoint.mac) if endpoint.mac else k.random_tap_mac()
                k.attach_tap(kernel, endpoint.ifname, None, endpoint.mtu, mac)
                ovs_port = True  # from here on a failure takes the port out again
                _ovs_attach(endpoint)
            else:
                bridge = _bridge_for(kernel, endpoint, created)
                vnet = use_vnet and bool(k.tun_features() & k.IFF_VNET_HDR)
                fd = k.open_tap(endpoint.ifname, vnet_hdr=vnet)
                # the guest's MAC with fe: as realize gives it (plan.host_side_mac), if known
                mac = _host_side_mac(endpoint.mac) if endpoint.mac else k.random_tap_mac()
                tap = k.attach_tap(kernel, endpoint.ifname, bridge, endpoint.mtu, mac)
                _tap_vlan(kernel, endpoint, bridge, tap)
                _record_shared(kernel, endpoint, created)
            try:
                send_fd(sock, fd)
            except OSError as err:
                raise ApplyError(f"cannot send the fd to the caller: {err.strerror}",
                                 fix="the caller (QEMU) went away; nothing was kept") from err
            if macvtap:
                k.wait_and_delete(peer_pid(sock), require_index(kernel, endpoint.ifname))
            if ovs:  # the tap goes with QEMU's fd; its OVS port must be taken out after
                k.wait_then(peer_pid(sock), lambda: _ovs_detach(endpoint))
        except BaseException:
            if fd >= 0:
                os.close(fd)  # a tap goes with its last fd
                fd = -1
            if ovs_port:
                _ovs_detach(endpoint)
            k.delete_links(kernel, created)
            raise
        finally:
            if fd >= 0:
                os.close(fd)


def _ovs_attach(endpoint: Endpoint) -> None:
    """The tap as an access port of the binding's OVS bridge, with its external_ids; the
    bridge and the uplink's port are made if missing and stay (other guests use them)."""
    from netmap.netlink import ovs_steps
    from netmap.plan import default_ovsdb

    binding = endpoint.binding
    assert endpoint.bridge is not None
    ids = ovs_steps.helper_port_ids(binding.external_ids, endpoint.guest or "qemu-helper",
                                    endpoint.mac)
    ovs_steps.attach_port(binding.ovsdb or default_ovsdb(), endpoint.bridge,
                          binding.datapath_type, binding.uplink, endpoint.ifname,
                          endpoint.vlan, ids)


def _ovs_detach(endpoint: Endpoint) -> None:
    from netmap.netlink import ovs_steps
    from netmap.plan import default_ovsdb

    assert endpoint.bridge is not None
    ovs_steps.detach_port(endpoint.binding.ovsdb or default_ovsdb(), endpoint.bridge,
                          endpoint.ifname)


def _host_side_mac(guest_mac: str) -> str:
    from netmap.plan import host_side_mac  # the plan's steps: only when the MAC is known

    return host_side_mac(guest_mac)


def require_index(kernel: rtnl.Rtnl, name: str) -> int:
    from netmap.netlink.tapfd import require_link

    return require_link(kernel, name, "link").index


def _open_macvtap(kernel: rtnl.Rtnl, endpoint: Endpoint, created: list[str]) -> int:
    from netmap.netlink import tapfd as k

    uplink = endpoint.binding.uplink
    lower = k.require_link(kernel, uplink, "uplink").index
    if endpoint.vlan is not None:  # on the uplink's 802.1Q sub-interface, as realize does
        name = f"{uplink}.{endpoint.vlan}"
        lower, made = k.ensure_vlan(kernel, uplink, endpoint.vlan, name)
        created += [name] if made else []
    k.private_sysfs()
    macvlan_mode = mode_of(endpoint.binding).macvlan_mode
    assert endpoint.mac is not None and macvlan_mode is not None
    index = k.ensure_macvtap(kernel, endpoint.ifname, lower, macvlan_mode, endpoint.mac,
                             endpoint.mtu)
    created.append(endpoint.ifname)
    return k.open_macvtap(endpoint.ifname, index)


def _bridge_for(kernel: rtnl.Rtnl, endpoint: Endpoint, created: list[str]) -> int:
    """The bridge the tap joins, ensured as realize would make it; records what it made."""
    from netmap.netlink import tapfd as k

    assert endpoint.bridge is not None
    if kernel.get(endpoint.bridge) is not None:
        return k.ensure_bridge(kernel, endpoint.bridge, None, mtu=endpoint.mtu)[0]
    binding = endpoint.binding
    port = binding.uplink
    if endpoint.vxlan is not None:
        assert endpoint.network.vni is not None
        _, made = k.ensure_vxlan(kernel, endpoint.vxlan, endpoint.network.vni, binding.uplink,
                                 binding.vxlan, endpoint.mtu)
        created += [endpoint.vxlan] if made else []
        port = endpoint.vxlan
    index, made = k.ensure_bridge(kernel, endpoint.bridge, port, mtu=endpoint.mtu,
                                  vlan=endpoint.vlan)
    created += [endpoint.bridge] if made else []
    return index


def _record_shared(kernel: rtnl.Rtnl, endpoint: Endpoint, created: list[str]) -> None:
    """The bridge (and vxlan device) made here outlive the tap: state records them, for no
    guest, so that the next release on the host removes them once unused."""
    if not created:  # most runs: the bridge was there (and the plan's steps not imported)
        return
    from netmap import plan as p

    steps: list[p.Step] = []
    if endpoint.vxlan is not None and endpoint.vxlan in created:
        assert endpoint.network.vni is not None
        steps.append(p.EnsureVxlan(name=endpoint.vxlan, vni=endpoint.network.vni,
                                   underlay=endpoint.binding.uplink, mtu=endpoint.mtu))
    if endpoint.bridge is not None and endpoint.bridge in created:
        steps += [p.EnsureBridge(name=endpoint.bridge, mtu=endpoint.mtu,
                                 vlan_filtering=endpoint.vlan is not None),
                  p.EnslavePort(port=endpoint.vxlan or endpoint.binding.uplink,
                                bridge=endpoint.bridge)]
    if steps:
        from netmap.netlink.release import record_unowned_links  # most runs make nothing

        record_unowned_links(endpoint.host.name, kernel, steps)


def _tap_vlan(kernel: rtnl.Rtnl, endpoint: Endpoint, bridge: int, tap: int) -> None:
    """Bridge mode with a VLAN: the tap is an access port of it (realize's BridgeVlan)."""
    from netmap.netlink.tapfd import set_access_vlan

    if endpoint.vlan is None:
        return
    live = kernel.get(str(endpoint.bridge))
    if live is None or not live.vlan_filtering:
        raise ApplyError(f"bridge {endpoint.bridge} does not filter VLANs, so the tap would "
                         f"not be on network {endpoint.network.name}'s VLAN {endpoint.vlan}",
                         fix="let 'netmap realize' prepare the bridge (vlan_filtering)")
    set_access_vlan(kernel, tap, endpoint.vlan)


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

