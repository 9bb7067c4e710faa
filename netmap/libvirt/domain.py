"""libvirt domain XML (`virsh dumpxml`) -> a netmap Guest, plus findings for what cannot map.

How an <interface> names its logical network, first match wins:
1. netmap's own metadata, keyed by MAC (NAMESPACE in netmap/libvirt/__init__.py):
     <metadata><netmap:guest xmlns:netmap="https://netmap.dev/xmlns/1" host="host-a">
       <netmap:nic mac="52:54:00:12:34:56" network="prod" vhost="required"/>
     </netmap:guest></metadata>
2. type='network': the libvirt network is named after the logical network, or is a VF pool
   (`netmap libvirt-networks`) whose portgroup names it.
3. type='bridge' / 'direct': the source host's mapping (eth0 in vepa mode on host-a is prod).
Everything else (user, vhostuser, vdpa, ...) becomes a finding, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from netmap.errors import InputError
from netmap.libvirt import NAMESPACE, vf_pool_network
from netmap.libvirt.interfaces import (
    DIRECT_MODES,
    HOST_INDEPENDENT,
    LIBVIRT_TYPES,
    Interface,
    check_macs,
    parse_interface,
    read_metadata,
)
from netmap.libvirt.xmlsafe import MAX_BYTES, XmlDocument, parse_untrusted
from netmap.model import names
from netmap.model.fleet import Binding, Guest, GuestNic, Host, Network, Source
from netmap.model.nic_values import mac_problem
from netmap.modes import mode_of
from netmap.rules.check import ERROR, INFO, WARNING, Finding
from netmap.support.regular_file import read_regular


@dataclass(frozen=True)
class DomainImport:
    guest: Guest
    source_host: str | None
    interfaces: tuple[Interface, ...]
    findings: tuple[Finding, ...]
    document: XmlDocument

    @property
    def has_metadata(self) -> bool:
        """Whether the domain carries netmap's metadata element (valid or not)."""
        metadata = self.document.root.find("metadata")
        return metadata is not None and any(
            element.tag.startswith("{" + NAMESPACE + "}") for element in metadata.iter())

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    def as_dict(self) -> dict[str, object]:
        nics = [{"index": n.index, "network": n.network, "mac": n.mac, "model": n.model,
                 "vhost": n.vhost, "semantic": n.semantic, "mtu": n.mtu, "queues": n.queues}
                for n in self.guest.nics]
        return {"guest": self.guest.name, "host": self.guest.host,
                "source_host": self.source_host, "nics": nics,
                "interfaces": [i.as_dict() for i in self.interfaces],
                "findings": [f.as_dict() for f in self.findings]}


def guest_from_domain_file(path: Path, networks: dict[str, Network],
                           hosts: Mapping[str, Host]) -> Guest:
    """Load a mappings/guests/*.xml file, mapping bridge/direct sources through `hosts`
    (the host files next to it; load reads them). Anything that would leave a NIC out is
    an InputError here: a fleet file that silently lost a NIC would make every check of
    that guest wrong."""
    try:  # a mapping file: regular only, never a FIFO that `import FILE` may read
        data = read_regular(path, MAX_BYTES)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", file=path,
                         fix="check the path and its permissions") from err
    result = import_domain(parse_untrusted(data, str(path)), networks, hosts)
    worst = [f for f in result.findings if f.severity in (ERROR, WARNING)]
    if worst:
        first = worst[0]
        more = f" (and {len(worst) - 1} more problem(s))" if len(worst) > 1 else ""
        raise InputError(first.message + more, file=path, fix=first.hint)
    return result.guest


def import_domain(doc: XmlDocument, networks: dict[str, Network], hosts: Mapping[str, Host], *,
                  host: str | None = None, prefer_host: str | None = None,
                  avoid_host: str | None = None) -> DomainImport:
    """Read a domain. `host` forces the source host whose mapping explains bridge/direct
    sources; otherwise it is the host whose mapping explains most of them, preferring
    `prefer_host`, then the metadata's, and taking `avoid_host` (the destination of a
    migration, which the guest is not coming from) only when no other host fits as well."""
    root = doc.root
    if root.tag != "domain":
        raise doc.error(root, f"is not a libvirt domain: the root element is <{root.tag}>",
                        "pass the output of 'virsh dumpxml DOMAIN'")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise doc.error(root, "the domain has no <name>", "add <name>GUEST</name>",
                        key="domain.name")
    findings: list[Finding] = []
    meta_host, by_mac = read_metadata(doc, networks, findings)
    parsed = [parse_interface(doc, position, element, findings)
              for position, element in enumerate(root.iterfind("devices/interface"))]
    check_macs(parsed, findings)
    if host is not None and host not in hosts:
        raise InputError(f"unknown host {host!r}", fix="name a host of the mappings directory")
    chosen = host or _choose_host(parsed, by_mac, networks, hosts,
                                  [prefer_host, meta_host], avoid_host, findings)
    mapped: list[Interface] = []
    nics: list[GuestNic] = []
    for iface in parsed:
        iface = _map(iface, by_mac, networks, hosts.get(chosen) if chosen else None, findings)
        network, mac = iface.network, iface.mac
        if network is not None and mac is not None and not mac_problem(mac):
            meta = by_mac.get(mac, {})
            iface = replace(iface, nic=len(nics))
            vhost = meta.get("vhost") or iface.vhost
            nics.append(GuestNic(len(nics), network, mac, iface.model, vhost,
                                 meta.get("semantic"), iface.mtu,
                                 Source(doc.file, iface.line), iface.queues))
            _check_vlan(iface, networks[network], findings)
        mapped.append(iface)
    guest = Guest(name, chosen, tuple(nics), Source(doc.file, doc.line(root)))
    return DomainImport(guest, chosen, tuple(mapped), tuple(findings), doc)


_LIBVIRT_MODE = {mode: libvirt for libvirt, mode in DIRECT_MODES.items()}


# --- mapping ------------------------------------------------------------------------------

def _resolve(iface: Interface, host: Host | None,
             networks: dict[str, Network]) -> tuple[str | None, str, str]:
    """(logical network, how, why not) for an interface whose source names host objects."""
    src = iface.source
    if iface.type == "network":
        wanted = src.get("network", "")
        if host is None:
            return None, "", f"libvirt network {wanted!r} is no logical network"
        pool = [b for b in host.bindings.values()
                if mode_of(b).libvirt_type == "network" and vf_pool_network(b.uplink) == wanted]
        portgroup = src.get("portgroup")
        chosen = [b for b in pool if b.network == portgroup] if portgroup else pool
        if len(chosen) == 1:
            return chosen[0].network, f"VF pool {wanted} on {host.name}", ""
        why = (f"VF pool {wanted} on {host.name} carries {', '.join(b.network for b in pool)}"
               "; the portgroup must name one" if pool
               else f"libvirt network {wanted!r} is neither a logical network nor a VF pool "
               f"of {host.name}")
        return None, "", why
    if host is None:
        return None, "", "no source host mapping to explain it"
    bindings = list(host.bindings.values())
    if iface.type == "direct":
        dev, mode = src.get("dev", ""), src.get("mode", "vepa")
        found = [b for b in bindings
                 if mode_of(b).libvirt_type == "direct" and dev in _lowers(b, networks)]
        exact = [b for b in found if b.mode == DIRECT_MODES.get(mode)] or found
        what = f"macvtap on {dev!r}"
    elif iface.type == "bridge":
        bridge = src.get("bridge", "")
        exact = [b for b in bindings if _bridge_of(b, networks) == bridge]
        # an OVS bridge and a Linux bridge may share a name across networks: the
        # <virtualport> says which one the interface is on
        exact = [b for b in exact if mode_of(b).libvirt_virtualport == iface.virtualport
                 ] or exact
        what = f"{'OVS ' if iface.virtualport == 'openvswitch' else ''}bridge {bridge!r}"
    elif iface.type == "hostdev":
        # A PCI address does not say which PF it belongs to without the host's sysfs; the
        # VLAN the VF is given does, when one SR-IOV network alone has it.
        exact = [b for b in bindings if mode_of(b).claims == "vf" and b.vf_attach == "hostdev"
                 and _vlan_of(b, networks) == iface.vlan]
        what = f"a VF with VLAN {iface.vlan}" if iface.vlan else "an untagged VF"
        if len(exact) > 1:
            return None, "", (f"{what} fits {', '.join(b.network for b in exact)} on "
                              f"{host.name}; netmap cannot tell which")
    else:
        return None, "", f"type {iface.type} names no network netmap can look up"
    if len(exact) > 1 and iface.vlan is not None:
        exact = [b for b in exact if _vlan_of(b, networks) == iface.vlan] or exact
    if len(exact) == 1:
        return exact[0].network, f"{what} on {host.name}", ""
    if not exact:
        return None, "", f"{host.name}'s mapping has no network on {what}"
    return None, "", (f"{what} on {host.name} carries "
                      f"{', '.join(b.network for b in exact)}; netmap cannot tell which")


def _vlan_of(binding: Binding, networks: dict[str, Network]) -> int | None:
    return binding.vlan if binding.vlan is not None else networks[binding.network].vlan


def _lowers(binding: Binding, networks: dict[str, Network]) -> set[str]:
    """The devices a macvtap of this binding sits on: the uplink, or its VLAN device."""
    vlan = _vlan_of(binding, networks)
    return {binding.uplink} | ({names.vlan_name(binding.uplink, vlan)} if vlan else set())


def _bridge_of(binding: Binding, networks: dict[str, Network]) -> str | None:
    return mode_of(binding).guest_bridge(binding, networks[binding.network])


def _needs_host(iface: Interface, networks: dict[str, Network],
                by_mac: dict[str, dict[str, str]]) -> bool:
    if iface.mac in by_mac or iface.type not in ("network", "bridge", "direct", "hostdev"):
        return False
    return not (iface.type == "network" and iface.source.get("network") in networks)


def _choose_host(parsed: list[Interface], by_mac: dict[str, dict[str, str]],
                 networks: dict[str, Network], hosts: Mapping[str, Host],
                 preferred: list[str | None], avoid: str | None,
                 findings: list[Finding]) -> str | None:
    dependent = [i for i in parsed if _needs_host(i, networks, by_mac)]
    hints = [h for h in preferred if h is not None and h in hosts and h != avoid]
    if not dependent:
        return hints[0] if hints else None
    # A hint that explains every interface is a best fit whatever the others score: the
    # answer below without scoring every host (a fleet of XML guests named its host each)
    for hint in hints:
        if all(_resolve(i, hosts[hint], networks)[0] is not None for i in dependent):
            return hint
    score = {name: sum(_resolve(i, host, networks)[0] is not None for i in dependent)
             for name, host in hosts.items()}
    best = max(score.values(), default=0)
    fitting = [name for name in sorted(hosts, key=lambda n: (n == avoid, n))
               if score[name] == best and best > 0]
    for hint in hints:
        if hint in fitting or best == 0:
            return hint
    if len(fitting) > 1:
        findings.append(Finding(
            "SOURCE_HOST_AMBIGUOUS", INFO, None,
            f"the interfaces fit the mappings of {', '.join(fitting)}; read them as "
            f"{fitting[0]}'s.", "name the source host (--host, or host= in netmap metadata)"))
    return fitting[0] if fitting else None


def _map(iface: Interface, by_mac: dict[str, dict[str, str]], networks: dict[str, Network],
         host: Host | None, findings: list[Finding]) -> Interface:
    if iface.type in HOST_INDEPENDENT or iface.teaming == "transient":
        why = ("it is unplugged before migration and plugged again by the management "
               "layer (teaming transient)" if iface.teaming == "transient"
               else "its backend does not depend on the host's networks")
        findings.append(Finding("NOT_A_HOST_NETWORK", INFO, None,
                                f"{iface.label}: {why}; netmap leaves it alone.",
                                "nothing to do"))
        return iface
    if iface.type not in LIBVIRT_TYPES:
        return iface  # already reported
    meta = by_mac.get(iface.mac) if iface.mac else None
    if meta is not None:
        return replace(iface, network=meta["network"], how="netmap metadata")
    if iface.type == "network" and iface.source.get("network") in networks:
        return replace(iface, network=iface.source["network"], how="libvirt network name")
    network, how, why = _resolve(iface, host, networks)
    # An interface without a usable MAC (already an error) is still mapped when its source
    # says where it is: the hook then knows the guest is netmap's and refuses it, as import
    # does, instead of passing it on unchecked. It never becomes a NIC.
    if network is None and (iface.mac is None or mac_problem(iface.mac)):
        return iface
    if network is None:
        findings.append(Finding(
            "INTERFACE_UNMAPPED", WARNING, None,
            f"{iface.label}: netmap cannot tell its logical network: {why}.",
            f'add <netmap:nic mac="{iface.mac}" network="NAME"/> to the domain\'s netmap '
            "metadata (namespace " + NAMESPACE + ")"))
        return iface
    mode = iface.source.get("mode", "vepa")
    # _resolve names a network only from a host's bindings: with a network, host is set
    binding = host.bindings[network] if host is not None else None
    if (host is not None and binding is not None and iface.type == "direct"
            and DIRECT_MODES.get(mode) != binding.mode):
        findings.append(Finding(
            "MODE_DIFFERS", WARNING, None,
            f"{iface.label}: runs macvtap mode {mode}, but {host.name} binds {network} as "
            f"{binding.mode}; the check compares against the mapping.",
            f"align the domain with the mapping (mode='{_LIBVIRT_MODE[binding.mode]}')"
            if binding.mode in _LIBVIRT_MODE else "align the domain with the mapping"))
    return replace(iface, network=network, how=how)


def _check_vlan(iface: Interface, network: Network, findings: list[Finding]) -> None:
    if iface.vlan is not None and iface.vlan != network.vlan:
        findings.append(Finding(
            "VLAN_DIFFERS", WARNING, iface.nic,
            f"{iface.label}: tags VLAN {iface.vlan}, but network {network.name} is "
            f"{'VLAN ' + str(network.vlan) if network.vlan else 'untagged'}.",
            f"set <tag id='{network.vlan}'/>" if network.vlan else "remove <vlan>"))
