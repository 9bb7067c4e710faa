"""The <interface> elements of a domain XML and netmap's metadata, read and checked the way
libvirt would refuse them. Mapping them to logical networks is domain.py's job."""

from __future__ import annotations

from dataclasses import dataclass, replace
from xml.etree import ElementTree as ET

from netmap.libvirt import NAMESPACE
from netmap.libvirt.xmlsafe import XmlDocument
from netmap.model.fleet import (
    MAX_QUEUES,
    VHOST_POLICIES,
    VIRTIO_MODELS,
    Network,
)
from netmap.model.nic_values import MTU_RANGE, mac_problem
from netmap.modes import REGISTRY, semantic_classes
from netmap.rules.check import ERROR, WARNING, Finding

# Every <interface type=...> libvirt knows (domain_conf.c, virDomainNetType).
LIBVIRT_TYPES = frozenset({"user", "ethernet", "vhostuser", "server", "client", "mcast", "udp",
                           "network", "bridge", "internal", "direct", "hostdev", "vdpa",
                           "null", "vds"})
# Types whose backend lives in QEMU or a socket, not on a host network: nothing to map.
HOST_INDEPENDENT = frozenset({"user", "server", "client", "mcast", "udp", "null"})
TAP_TYPES = frozenset({"network", "bridge", "ethernet"})  # libvirt: only these take filterref
# libvirt's <source mode=...> for direct interfaces -> netmap's mode
DIRECT_MODES = {mode.libvirt_direct_mode: name for name, mode in REGISTRY.items()
                if mode.libvirt_direct_mode is not None}
NS = "{" + NAMESPACE + "}"


@dataclass(frozen=True)
class Interface:
    """One <interface> of the domain and what netmap made of it."""

    position: int  # among the domain's <interface> elements, from 0
    element: ET.Element
    line: int | None
    type: str
    mac: str | None
    model: str
    vhost: str
    mtu: int | None
    vlan: int | None
    source: dict[str, str]
    network: str | None = None  # the logical network, when mapped
    how: str = ""  # how it was mapped, for people
    nic: int | None = None  # the index of the GuestNic it became
    teaming: str | None = None  # failover pair: persistent (virtio) or transient (VF)
    queues: int = 1  # <driver queues='N'/>: virtio-net queue pairs
    virtualport: str | None = None  # <virtualport type=...>: openvswitch on an OVS bridge

    @property
    def label(self) -> str:
        where = f"line {self.line}, " if self.line else ""
        return f"interface #{self.position} ({where}type {self.type}, MAC {self.mac or 'none'})"

    def as_dict(self) -> dict[str, object]:
        return {"position": self.position, "line": self.line, "type": self.type,
                "mac": self.mac, "model": self.model, "vhost": self.vhost, "mtu": self.mtu,
                "vlan": self.vlan, "source": self.source, "network": self.network,
                "how": self.how, "nic": self.nic, "queues": self.queues}


# --- reading ------------------------------------------------------------------------------

def read_metadata(doc: XmlDocument, networks: dict[str, Network],
              findings: list[Finding]) -> tuple[str | None, dict[str, dict[str, str]]]:
    host = None
    by_mac: dict[str, dict[str, str]] = {}
    metadata = doc.root.find("metadata")
    if metadata is None:
        return None, by_mac
    nics = list(metadata.iter(NS + "nic"))
    for guest in metadata.iter(NS + "guest"):
        host = guest.get("host") or host
        # `virsh metadata --set` puts only the top element in the namespace: accept its
        # plain <nic> children too
        nics += [child for child in guest if child.tag == "nic"]
    for nic in nics:
        where = f"netmap:nic on line {doc.line(nic)}"
        mac, network = (nic.get("mac") or "").lower(), nic.get("network") or ""
        problem = ("has no mac attribute" if not mac else mac_problem(mac)
                   or ("has no network attribute" if not network else None)
                   or (f"names network {network!r}, which networks.toml does not define"
                       if network not in networks else None)
                   or _choice(nic, "vhost", VHOST_POLICIES)
                   or _choice(nic, "semantic", semantic_classes()))
        if problem:
            findings.append(Finding("METADATA_INVALID", ERROR, None, f"{where}: {problem}.",
                                    'write <netmap:nic mac="52:54:00:.." network="NAME"/> '
                                    f"with a network of networks.toml ({', '.join(networks)})"))
            continue
        by_mac[mac] = {key: value for key, value in nic.attrib.items()}
    return host, by_mac


def _choice(element: ET.Element, key: str, choices: tuple[str, ...]) -> str | None:
    value = element.get(key)
    if value is None or value in choices:
        return None
    return f"{key}={value!r} is not one of {', '.join(choices)}"


def parse_interface(doc: XmlDocument, position: int, element: ET.Element,
                     findings: list[Finding]) -> Interface:
    kind = element.get("type") or ""
    mac_element = element.find("mac")
    mac = mac_element.get("address", "").lower() if mac_element is not None else None
    model_element = element.find("model")
    model = model_element.get("type", "default") if model_element is not None else "default"
    driver = element.find("driver")
    driver_name = driver.get("name") if driver is not None else None
    queues = driver.get("queues") if driver is not None else None
    virtio = model in VIRTIO_MODELS
    vhost = "off" if not virtio or driver_name == "qemu" else (
        "required" if driver_name == "vhost" else "preferred")
    source = element.find("source")
    tags = element.findall("vlan/tag")
    teaming = element.find("teaming")
    virtualport = element.find("virtualport")
    iface = Interface(position, element, doc.line(element), kind, mac or None, model, vhost,
                      None, None, dict(source.attrib) if source is not None else {},
                      teaming=teaming.get("type") if teaming is not None else None,
                      virtualport=virtualport.get("type") if virtualport is not None
                      else None)
    problems = []
    mtu_element = element.find("mtu")
    mtu_text = mtu_element.get("size", "") if mtu_element is not None else None
    mtu = None
    if mtu_text is not None:
        mtu = int(mtu_text) if mtu_text.isdigit() else None
        if mtu is None or not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
            problems.append((f"<mtu size='{mtu_text}'/> is not an MTU "
                             f"({MTU_RANGE[0]}..{MTU_RANGE[1]})", "write the MTU in bytes"))
    vlan = None
    if len(tags) == 1 and (tags[0].get("id") or "").isdigit():
        vlan = int(tags[0].get("id", "0"))
    elif len(tags) > 1:
        findings.append(Finding("VLAN_TRUNK", WARNING, None,
                                f"{iface.label}: a VLAN trunk; netmap maps one logical "
                                "network per NIC and checks only the native VLAN.",
                                "model each VLAN as its own NIC, or accept the unchecked trunk"))
    if element.find("filterref") is not None and kind not in TAP_TYPES:
        problems.append((f"<filterref> is not supported on type {kind} (libvirt applies "
                         "nwfilter rules to tap devices only)", "remove <filterref>"))
    if driver_name == "vhost" and not virtio:
        problems.append((f"<driver name='vhost'/> with model {model}: vhost-net serves "
                         "virtio NICs only", "use <model type='virtio'/> or drop name='vhost'"))
    queue_count = 1
    if queues is not None:  # libvirt reads 0 as "not set"
        # ASCII digits only, and few: int() takes '²' for a digit and refuses 5,000 of them
        plain = queues.isascii() and queues.isdigit() and len(queues) < 8
        queue_count = max(int(queues), 1) if plain else 0
        if not 1 <= queue_count <= MAX_QUEUES:
            problems.append((f"<driver queues='{queues}'/> is not a number of queues "
                             f"(1..{MAX_QUEUES}, the kernel's limit for a tap)",
                             f"write queues='N' with N from 1 to {MAX_QUEUES}"))
            queue_count = 1
        elif queue_count > 1 and not virtio:
            problems.append((f"<driver queues='{queues}'/> with model {model}: multiqueue "
                             "needs virtio", "use <model type='virtio'/> or remove queues"))
            queue_count = 1
    if kind and kind not in LIBVIRT_TYPES:
        findings.append(Finding("UNKNOWN_INTERFACE_TYPE", ERROR, None,
                                f"{iface.label}: libvirt has no interface type {kind!r}.",
                                "use one of " + ", ".join(sorted(LIBVIRT_TYPES))))
    elif not kind:
        problems.append(("has no type attribute", "add type='network' (or bridge, direct...)"))
    for problem, fix in problems:
        findings.append(Finding("INTERFACE_INVALID", ERROR, None,
                                f"{iface.label}: {problem}; libvirt refuses it.", fix))
    return replace(iface, mtu=mtu, vlan=vlan, queues=queue_count)


def check_macs(parsed: list[Interface], findings: list[Finding]) -> None:
    seen: dict[str, Interface] = {}
    for iface in parsed:
        if iface.type in HOST_INDEPENDENT or iface.teaming == "transient":
            continue  # nothing of the host depends on it; a failover VF shares its MAC
        if iface.mac is None:
            findings.append(Finding(
                "MAC_MISSING", ERROR, None,
                f"{iface.label}: no <mac address=...>; libvirt would make up a new one, so "
                "the NIC would not keep its identity across a migration.",
                "add <mac address='52:54:00:xx:xx:xx'/> (virsh dumpxml shows the one in use)"))
            continue
        problem = mac_problem(iface.mac)
        if problem:
            findings.append(Finding("MAC_INVALID", ERROR, None, f"{iface.label}: {problem}.",
                                    "write it as 52:54:00:xx:xx:xx"))
        elif iface.mac in seen:
            findings.append(Finding(
                "MAC_DUPLICATE", ERROR, None,
                f"{iface.label}: MAC {iface.mac} is also {seen[iface.mac].label}.",
                "give every interface its own MAC"))
        else:
            seen[iface.mac] = iface


