"""Mappings directory -> model. Reads files only; every mistake becomes an InputError."""

from __future__ import annotations

import errno
import functools
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from netmap.errors import InputError
from netmap.load.parsed import ParsedGuests
from netmap.load.tomlcheck import (
    Document,
    KeyPath,
    Schema,
    did_you_mean,
    flag,
    named_tables,
    number,
    subtable,
    table_array,
    text,
    text_table,
    texts,
)
from netmap.model import names
from netmap.model.fleet import (
    KNOWN_FEATURES,
    MAX_QUEUES,
    VF_ATTACH,
    VHOST_POLICIES,
    VIRTIO_MODELS,
    Binding,
    Fleet,
    Guest,
    GuestNic,
    Host,
    Network,
    Source,
    SriovPool,
    Uplink,
    Vxlan,
)
from netmap.model.netns_name import netns_problem
from netmap.model.nic_values import MTU_RANGE, mac_problem
from netmap.model.vxlan_options import Problem as UnderlayProblem
from netmap.model.vxlan_options import check_underlay
from netmap.modes import (
    REGISTRY,
    binding_problem,
    bridge_clash,
    fields_problem,
    semantic_classes,
    sharing_problem,
)
from netmap.modes.ovs import DATAPATH_TYPES as OVS_DATAPATH_TYPES
from netmap.support.regular_file import describe, not_regular

DEFAULT_DIRS = (Path("/etc/netmap"), Path("mappings"))
# used with fullmatch: match() with $ would accept a trailing newline ("vm1\n")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")

VLAN_RANGE = (1, 4094)
VNI_RANGE = (1, 2**24 - 1)


def mappings_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--mappings DIR, else $NETMAP_MAPPINGS, else /etc/netmap, else ./mappings."""
    chosen = explicit or os.environ.get("NETMAP_MAPPINGS")
    if chosen:
        path = Path(chosen)
        _refuse_odd_networks_file(path)
        if not (path / "networks.toml").is_file():
            raise InputError(
                f"{path} is not a mappings directory (no networks.toml in it)",
                fix="point --mappings or $NETMAP_MAPPINGS at the folder holding networks.toml",
            )
        return path
    for path in DEFAULT_DIRS:
        _refuse_odd_networks_file(path)
        if (path / "networks.toml").is_file():
            return path
    raise InputError(
        "no mappings found in /etc/netmap or ./mappings",
        fix="pass --mappings DIR or set $NETMAP_MAPPINGS",
    )


def _refuse_odd_networks_file(folder: Path) -> None:
    """A networks.toml that is there but is no file (a directory, a FIFO) is what it is,
    not "no networks.toml"."""
    path = folder / "networks.toml"
    kind = describe(path)
    if kind is not None:
        raise not_regular(path, kind)
    try:
        os.stat(path)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.ENOTDIR):  # a loop, no permission
            raise InputError(f"cannot be read: {err.strerror}", file=path,
                             fix="make it a readable file (or point --mappings elsewhere)"
                             ) from err


def name_problem(name: str) -> str | None:
    return None if _NAME.fullmatch(name) else (
        f"{name!r} must start with a letter or digit and hold only letters, digits, '_', '.', '-'"
    )


_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$")
MAX_HOSTNAME, MAX_LABEL = 253, 63


def host_name_problem(name: str) -> str | None:
    """Why `name` cannot be a host's name (what `hostname` and DNS accept), or None.

    netmap names files after it (state, lock), so a name no host can have is refused here,
    not as ENAMETOOLONG in the middle of a realize."""
    if not name:
        return "is empty"
    if len(name) > MAX_HOSTNAME:
        return f"has {len(name)} characters; a host name has at most {MAX_HOSTNAME}"
    for label in name.split("."):
        if len(label) > MAX_LABEL:
            return (f"has a part of {len(label)} characters ({label[:20]}...); each "
                    f"dot-separated part of a host name has at most {MAX_LABEL}")
        if not _LABEL.match(label):
            return (f"{name!r} is not a host name: each dot-separated part holds letters, "
                    "digits and '-', and neither starts nor ends with '-'")
    return None


_LIBVIRT_URI = re.compile(r"^[a-z][a-z0-9]*(\+[a-z0-9]+)?://[^\s]*$")


def libvirt_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a libvirt connection URI (driver[+transport]://[host]/path), or
    None. Only the shape: whether libvirt answers there is `netmap locate`'s question."""
    if not _LIBVIRT_URI.match(uri):
        return (f"{uri!r} is not a libvirt connection URI (driver[+transport]://[host]/path, "
                "no spaces)")
    return None


# What each kind of table may hold, in the order its keys are checked (tomlcheck.Schema).
# A file's first mistake in this order is the one reported.
MTU = number(low=MTU_RANGE[0], high=MTU_RANGE[1])
NETWORK = Schema("Network", segment=text(), vni=number(low=VNI_RANGE[0], high=VNI_RANGE[1]),
                 vlan=number(low=VLAN_RANGE[0], high=VLAN_RANGE[1]),
                 mtu=number(default=1500, low=MTU_RANGE[0], high=MTU_RANGE[1]),
                 description=text(default=""))
NETWORKS_FILE = Schema("NetworksFile", networks=named_tables(NETWORK))
HOST = Schema("Host", name=text(required=True), features=texts(), netns=text(),
              max_guests=number(low=0, high=100_000),
              max_endpoints=number(low=0, high=1_000_000), libvirt_uri=text(),
              ovsdb=text())
SRIOV = Schema("Sriov", total_vfs=number(required=True, low=1, high=4096))
UPLINK = Schema("Uplink", segments=texts(),
                mtu=number(default=1500, low=MTU_RANGE[0], high=MTU_RANGE[1]),
                sriov=subtable(SRIOV), mac=text())
VXLAN = Schema("Vxlan", port=number(default=4789, low=1, high=65535), group=text(),
               remotes=texts(), local=text())
BINDING = Schema("Binding", mode=text(required=True, choices=REGISTRY),
                 uplink=text(required=True), bridge=text(),
                 vlan=number(low=VLAN_RANGE[0], high=VLAN_RANGE[1]), mtu=MTU,
                 vf_attach=text(default="hostdev", choices=VF_ATTACH),
                 spoofchk=flag(default=True), vxlan=subtable(VXLAN),
                 external_ids=text_table(), datapath_type=text(choices=OVS_DATAPATH_TYPES))
HOST_FILE = Schema("HostFile", host=subtable(HOST, required=True),
                   uplinks=named_tables(UPLINK), networks=named_tables(BINDING))
GUEST = Schema("Guest", name=text(required=True), host=text())
NIC = Schema("Nic", network=text(required=True), mac=text(required=True),
             model=text(default="virtio"), vhost=text(default="preferred", choices=VHOST_POLICIES),
             semantic=text(choices=semantic_classes()), mtu=MTU,
             queues=number(default=1, low=1, high=MAX_QUEUES))
GUEST_FILE = Schema("GuestFile", guest=subtable(GUEST, required=True), nics=table_array(NIC))


# --- networks.toml --------------------------------------------------------------------------

def load_networks(path: Path) -> dict[str, Network]:
    doc = Document.read(path)
    networks: dict[str, Network] = {}
    for name, values in NETWORKS_FILE.read(doc).networks.items():
        where = ("networks", name)
        problem = name_problem(name)
        if problem:
            raise doc.error(where, problem, "rename the network")
        segment, vni, vlan = values.segment, values.vni, values.vlan
        if (segment is None) == (vni is None):
            raise doc.error(where, "needs exactly one of segment (a physical L2 domain) "
                            "or vni (an overlay)", 'add segment = "..." or vni = N')
        if vni is not None and vlan is not None:
            raise doc.error((*where, "vlan"), "an overlay (vni) network has no VLAN",
                            "remove vlan, or use segment instead of vni")
        networks[name] = Network(name, values.mtu, segment, vlan, vni, values.description,
                                 doc.source(where))
    if not networks:
        raise InputError("defines no networks", file=path, key="networks",
                         fix='add a [networks.NAME] table with segment = "..." or vni = N')
    return networks


# --- hosts/*.toml ---------------------------------------------------------------------------

def load_host(path: str | Path, networks: dict[str, Network]) -> Host:
    doc = Document.read(path)
    top = HOST_FILE.read(doc)
    about = top.host
    name = doc.check(("host", "name"), about.name, host_name_problem,
                     "use the machine's host name (letters, digits, '-' and dots)")
    if about.netns is not None:
        doc.check(("host", "netns"), about.netns, netns_problem,
                  "name the namespace as 'ip netns list' shows it (e.g. \"lab-host-a\"), or "
                  "remove netns: a real host is realized in its own namespace")
    if about.libvirt_uri is not None:
        doc.check(("host", "libvirt_uri"), about.libvirt_uri, libvirt_uri_problem,
                  'write a libvirt connection URI, e.g. "qemu+ssh://host-a/system" (or '
                  '"qemu:///system" on the host itself)')
    if about.ovsdb is not None:
        doc.check(("host", "ovsdb"), about.ovsdb, _ovsdb_problem,
                  'write it as "unix:/run/openvswitch/db.sock" (the socket ovsdb-server '
                  "listens on), or remove ovsdb to use ovs-vsctl's default")
    features = about.features
    for index, feature in enumerate(features):
        if feature not in KNOWN_FEATURES:
            raise doc.error(("host", "features", index), f"{feature!r} is not a known feature",
                            did_you_mean(feature, KNOWN_FEATURES))

    uplinks: dict[str, Uplink] = {}
    for uplink_name, link in top.uplinks.items():
        where = ("uplinks", uplink_name)
        problem = names.ifname_problem(uplink_name)
        if problem:
            raise doc.error(where, f"uplink name {problem}", "use the interface's real name")
        sriov = SriovPool(link.sriov.total_vfs) if link.sriov is not None else None
        mac = link.mac
        if mac is not None:
            mac = doc.check((*where, "mac"), mac.lower(), mac_problem,
                            'write it as "aa:bb:cc:dd:ee:ff"')
        uplinks[uplink_name] = Uplink(uplink_name, link.segments, link.mtu, sriov,
                                      doc.source(where), mac)

    bindings: dict[str, Binding] = {}
    bridge_of_uplink: dict[tuple[str, str], tuple[str, str]] = {}
    for network_name, values in top.networks.items():
        where = ("networks", network_name)
        if network_name not in networks:
            raise doc.error(where, f"binds {network_name!r}, which networks.toml does not "
                            f"define", f"define [networks.{network_name}] in networks.toml, "
                            "or " + did_you_mean(network_name, networks))
        network = networks[network_name]
        mode, uplink, bridge = values.mode, values.uplink, values.bridge
        if uplink not in uplinks:
            raise doc.error((*where, "uplink"), f"names {uplink!r}, which this host does not "
                            "define", f"add [uplinks.{uplink}] or " + did_you_mean(uplink, uplinks))
        if bridge is not None:
            doc.check((*where, "bridge"), bridge, _ifname_check, "use a name of at most 15 bytes")
        vxlan = _vxlan(doc, where, values.vxlan) if values.vxlan is not None else None
        _check_binding_fits(doc, where, network, mode, uplinks[uplink], bridge, vxlan)
        binding = Binding(network_name, mode, uplink, bridge, values.vlan, values.mtu,
                          values.vf_attach, values.spoofchk, vxlan, doc.source(where),
                          tuple(sorted(values.external_ids.items())), values.datapath_type,
                          about.ovsdb if "ovsdb" in REGISTRY[mode].owns_fields else None)
        refused = fields_problem(binding)
        if refused is not None:
            key, what, fix = refused
            raise doc.error((*where, key), what, fix)
        chosen = REGISTRY[mode].uplink_master(binding)
        if chosen is not None:
            other = bridge_of_uplink.setdefault(uplink, (chosen, network_name))
            if other[0] != chosen:
                raise doc.error((*where, "bridge"), f"puts uplink {uplink} in bridge {chosen}, "
                                f"but network {other[1]} puts it in {other[0]}",
                                "an interface has one master: use the same bridge for both")
        bindings[network_name] = binding
    _check_uplink_sharing(doc, bindings)
    clash = bridge_clash(list(bindings.values()), networks)
    if clash is not None:
        at, key, what, fix = clash
        raise doc.error(("networks", at, key), what, fix)
    return Host(name, uplinks, bindings, frozenset(features), about.netns, about.max_guests,
                about.max_endpoints, Source(str(path)), about.libvirt_uri,
                about.ovsdb)


def _ovsdb_problem(remote: str) -> str | None:
    """netmap talks to OVSDB on its unix socket, as ovs-vsctl does by default."""
    if not remote.startswith("unix:") or not remote[5:].startswith("/"):
        return f"{remote!r} is not unix:/ABSOLUTE/PATH"
    return None


def _check_uplink_sharing(doc: Document, bindings: dict[str, Binding]) -> None:
    """Refuse bindings the kernel cannot hold together on one uplink (the modes say which:
    netmap.modes.sharing_problem)."""
    by_uplink: dict[str, list[Binding]] = {}
    for binding in bindings.values():
        by_uplink.setdefault(binding.uplink, []).append(binding)
    for uplink, users in by_uplink.items():
        refused = sharing_problem(uplink, users)
        if refused is not None:
            network, key, what, fix = refused
            raise doc.error(("networks", network, key), what, fix)


def _ifname_check(name: str) -> str | None:
    problem = names.ifname_problem(name)
    return f"interface name {problem}" if problem else None


# A fleet's hosts repeat a few groups and peers: each is parsed (ipaddress, slow) once.
_underlay = functools.lru_cache(maxsize=4096)(check_underlay)


def _vxlan(doc: Document, where: KeyPath, values: Any) -> Vxlan:
    underlay = _underlay(values.group, values.local, tuple(values.remotes))
    if isinstance(underlay, UnderlayProblem):
        raise doc.error((*where, "vxlan", underlay.key), underlay.problem, underlay.fix)
    return Vxlan(values.port, underlay.group, underlay.remotes, underlay.local)


def _check_binding_fits(doc: Document, where: KeyPath, network: Network, mode: str,
                        uplink: Uplink, bridge: str | None, vxlan: Vxlan | None) -> None:
    problem = binding_problem(REGISTRY[mode], network, uplink, bridge, vxlan)
    if problem is not None:
        key, what, fix = problem
        raise doc.error((*where, key), what, fix)


# --- guests/*.toml --------------------------------------------------------------------------

def load_guest(path: str | Path, networks: dict[str, Network],
               hosts: Mapping[str, Host] | None = None) -> Guest:
    """A guest file. A domain XML's bridge and direct sources become networks through the
    host mappings: `hosts` (the fleet's), else the host files next to its folder."""
    if os.fspath(path).endswith(".xml"):
        # imported here: most fleets have no XML guest, and the XML reader is not small
        from netmap.libvirt.domain import guest_from_domain_file

        if hosts is None:
            hosts = _sibling_hosts(path, networks)
        return guest_from_domain_file(Path(path), networks, hosts)
    doc = Document.read(path)
    top = GUEST_FILE.read(doc)
    name = doc.check(("guest", "name"), top.guest.name, name_problem,
                     "use a plain guest name")
    nics: list[GuestNic] = []
    seen_macs: dict[str, int] = {}
    for index, values in enumerate(top.nics):
        where = ("nics", index)
        network = values.network
        if network not in networks:
            raise doc.error((*where, "network"), f"names {network!r}, which networks.toml does "
                            "not define", did_you_mean(network, networks))
        mac = doc.check((*where, "mac"), values.mac.lower(), mac_problem,
                        'write it as "52:54:00:xx:xx:xx"')
        if mac in seen_macs:
            raise doc.error((*where, "mac"), f"{mac} is already the MAC of nics[{seen_macs[mac]}]",
                            "give every NIC of a guest its own MAC")
        seen_macs[mac] = index
        if values.queues > 1 and values.model not in VIRTIO_MODELS:
            raise doc.error((*where, "queues"), f"{values.queues} queues with model "
                            f"{values.model!r}: only virtio-net has several queues",
                            'remove queues, or set model = "virtio"')
        nics.append(GuestNic(index, network, mac, values.model, values.vhost, values.semantic,
                             values.mtu, doc.source(where), values.queues))
    return Guest(name, top.guest.host, tuple(nics), Source(str(path)))


def _sibling_hosts(path: str | Path, networks: dict[str, Network]) -> dict[str, Host]:
    """The hosts of the mappings directory an XML guest sits in: they explain its bridge
    and direct sources."""
    hosts: dict[str, Host] = {}
    for host_file in sorted((Path(path).parent.parent / "hosts").glob("*.toml")):
        try:
            host = load_host(host_file, networks)
        except InputError:
            continue  # load_fleet reports it; here it only cannot explain a source
        hosts[host.name] = host
    return hosts


# --- the whole directory --------------------------------------------------------------------

def assemble(base: Path, networks: dict[str, Network], host_files: list[str],
             guest_files: list[str], *,
             host_loader: Callable[[str, dict[str, Network]], Host] = load_host,
             guest_loader: Callable[[str, dict[str, Network], Mapping[str, Host]], Guest]
             = load_guest, stored_hosts: Mapping[str, Host] | None = None) -> Fleet:
    """The fleet of a mappings directory whose networks and files (fleet_file_names) were
    read. A broken host or guest file lands in `Fleet.problems` and the rest loads.

    `host_loader`/`guest_loader` read one file (netmap.load answers them from its store),
    so that every load assembles the fleet here, in one place. `stored_hosts`: the hosts
    of `host_files`, every one known to be readable and named once (netmap.load's store
    knows it of a warm load), to be read only where used."""
    problems: list[InputError] = []
    hosts: dict[str, Host] = {}
    for path in host_files if stored_hosts is None else ():
        try:
            host = host_loader(path, networks)
        except InputError as err:
            problems.append(err)
            continue
        if host.name in hosts:
            problems.append(InputError(
                f"host {host.name!r} is already defined in {hosts[host.name].source}",
                file=path, key="host.name", fix="give every host file its own [host] name"))
            continue
        hosts[host.name] = host
    host_problems = len(problems)
    every_host = hosts if stored_hosts is None else stored_hosts
    guests: dict[str, Guest] = {}
    for path in guest_files:
        try:
            guest = guest_loader(path, networks, every_host)
            if guest.host is not None and guest.host not in every_host:
                raise _unknown_host(path, guest.host, every_host, problems[:host_problems])
            if guest.name in guests:
                raise InputError(f"guest {guest.name!r} is already defined in "
                                 f"{guests[guest.name].source}", file=path, key="guest.name",
                                 fix="give every guest file its own [guest] name")
        except InputError as err:
            problems.append(err)
            continue
        guests[guest.name] = guest
    # indexed as a warm load's are: a query asking who uses a MAC walks no guest for it
    return Fleet(networks, every_host, ParsedGuests(guests), tuple(problems), str(base))


def _unknown_host(path: str, name: str, hosts: Mapping[str, Host],
                  broken: list[InputError]) -> InputError:
    """A guest's host that did not load: when a host file that may define it is broken,
    that file and its error are the cause, not the guest."""
    own = [err for err in broken if err.file and Path(err.file).stem == name]
    if own or broken:
        cause = (own or broken)[0]
        more = len(broken) - 1
        others = f" (and {more} more broken host file(s))" if more else ""
        head = ("but its mapping cannot be loaded" if own else
                "which no readable mapping defines; a broken host file may")
        return InputError(f"names host {name!r}, {head}: {cause.where}: {cause.problem}"
                          f"{others}", file=path, key="guest.host",
                          fix=cause.fix or f"repair {cause.file}")
    return InputError(f"names host {name!r}, which has no mapping", file=path,
                      key="guest.host",
                      fix=f"add hosts/{name}.toml or " + did_you_mean(name, hosts))


def fleet_file_names(base: Path) -> tuple[list[str], list[str]]:
    """The host files and the guest files of a mappings directory, in the order load_fleet
    reads them: what `glob("*.toml")` (and `*.xml`) matches, any entry whose name ends so,
    sorted as the Paths would be. Strings, not Paths: a large fleet's Path objects would
    cost as much as parsing a good part of its files."""
    return _listed(base / "hosts", (".toml",)), _listed(base / "guests", (".toml", ".xml"))


def _listed(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """The folder's files with each suffix in turn (all of the first, then the next)."""
    try:
        names = sorted(os.listdir(folder))  # one folder: sorting the names sorts the paths
    except FileNotFoundError as err:
        if not os.path.islink(folder):
            return []  # a fleet without guests (or hosts) yet
        raise InputError("cannot list the folder: it is a symlink to nothing", file=folder,
                         fix=f"point {folder.name} at a directory") from err
    except OSError as err:  # not "no files": every host or guest would silently vanish
        raise InputError(f"cannot list the folder: {_folder_problem(folder, err)}",
                         file=folder, fix=f"make {folder.name}/ a readable directory "
                         "(a symlink to one is fine)") from err
    prefix = os.fspath(folder) + os.sep
    return [prefix + name for suffix in suffixes for name in names if name.endswith(suffix)]


def _folder_problem(folder: Path, err: OSError) -> str:
    if err.errno == errno.ENOTDIR:
        kind = describe(folder)
        return f"it is {kind}, not a directory" if kind else "it is a file, not a directory"
    if err.errno == errno.ELOOP:
        return "it is a symlink loop"
    return err.strerror or str(err)


def require_host(fleet: Fleet, name: str) -> Host:
    if name in fleet.hosts:
        return fleet.hosts[name]
    for problem in fleet.problems:
        if problem.file and Path(problem.file).stem == name:
            raise problem
    raise InputError(f"unknown host {name!r}", fix=f"{did_you_mean(name, fleet.hosts)} "
                     f"(hosts are defined in {fleet.root}/hosts/*.toml)")


def require_guest(fleet: Fleet, name: str) -> Guest:
    if name in fleet.guests:
        return fleet.guests[name]
    for problem in fleet.problems:
        if problem.file and Path(problem.file).stem == name:
            raise problem
    raise InputError(f"unknown guest {name!r}", fix=f"{did_you_mean(name, fleet.guests)} "
                     f"(guests are defined in {fleet.root}/guests/)")
