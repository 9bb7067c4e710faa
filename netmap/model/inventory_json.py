"""`netmap discover --json` read back into an Inventory: what another host said about itself.

The text came over the wire from a host that may run another netmap version or print
something else entirely, so each value is checked for its type; a document that is not an
inventory raises ValueError naming the first thing wrong.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from netmap.model.inventory import Interface, Inventory, SriovPf, VirtualFunctionUse

_TUPLES = {"altnames", "addresses", "vxlan_remotes"}


def _interface(data: Any) -> Interface:
    if not isinstance(data, dict):
        raise ValueError(f"an interface is {type(data).__name__}, not an object")
    fields = {f.name: f for f in dataclasses.fields(Interface)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            continue  # a newer netmap's field: this one does not reason about it
        if key in _TUPLES:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"interface {data.get('name')!r}: {key} is not a list of text")
            value = tuple(value)
        values[key] = value
    for key, kind in (("index", int), ("name", str), ("kind", str), ("mtu", int)):
        if not isinstance(values.get(key), kind) or isinstance(values.get(key), bool):
            raise ValueError(f"interface {data.get('name')!r}: {key} is missing or not "
                             f"{kind.__name__}")
    return Interface(**values)


def _pool(data: Any) -> SriovPf:
    try:
        vfs = tuple(VirtualFunctionUse(int(vf["index"]), str(vf["pci"]), vf.get("netdev"),
                                       vf.get("used_by")) for vf in data.get("vfs", ()))
        return SriovPf(str(data["pf"]), int(data["total_vfs"]), int(data["num_vfs"]), vfs)
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"an SR-IOV pool is malformed ({err})") from err


def inventory_from_json(text: str) -> Inventory:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("interfaces"), list):
        raise ValueError("not a `netmap discover --json` document (no interfaces list)")
    features = data.get("features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ValueError("features is not a list of text")
    pools = [_pool(pool) for pool in data.get("sriov", [])]
    return Inventory(str(data.get("hostname", "")), data.get("netns"),
                     tuple(_interface(i) for i in data["interfaces"]),
                     {pool.name: pool for pool in pools}, frozenset(features),
                     frozenset(vf.netdev for pool in pools for vf in pool.vfs if vf.netdev))
