"""What an endpoint kind (endpoints.py) uses of the transaction that decides and applies a
plan: its steps decided, the VLAN dump to verify against, the VF a NIC got.

ensure.Transaction is the one implementation. Naming this view instead of the class keeps
the order one way: endpoints -> ensure (Transaction) -> apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from netmap import plan as p
    from netmap.netlink.ovsdb import Connections
    from netmap.netlink.sysfs import VirtualFunction


class TransactionView(Protocol):
    @property
    def ovsdb(self) -> Connections:
        """OVSDB by remote, for the OVS endpoint's verify (opened when first asked)."""

    def bridge_vlans(self) -> dict[str, dict[int, int]]: ...

    def vf_for(self, nic: p.NicPlan) -> VirtualFunction | None: ...

    def vf_entry(self, pf: str, index: int) -> dict[str, object]: ...

    def ensure(self, nic: int, step: p.Step) -> None: ...
