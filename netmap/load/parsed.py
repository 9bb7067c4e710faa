"""The guests of a load that parsed them (every load but a fully warm one), with the same
index a warm load's store gives (netmap/load/guests.py): who uses a MAC, each guest's host.

Without it a query that asks who else uses a guest's MAC walked every guest per question:
`hosts-for` asks once per NIC of each candidate host it checks, so a cold 2,000-host fleet
spent more on those walks than on parsing the host files it checked them against.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import Any

from netmap.model.fleet import Guest, IndexedGuests


class ParsedGuests(IndexedGuests):
    """name -> Guest of guests already read (`guests`, in the fleet's order); the MAC index
    is built from them on first use, in one pass."""

    def __init__(self, guests: dict[str, Guest]) -> None:
        self._guests = guests
        self._placed: dict[str, str | None] | None = None
        self._by_mac: dict[str, list[tuple[str, int]]] | None = None

    def __getitem__(self, name: str) -> Guest:
        return self._guests[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._guests)

    def __len__(self) -> int:
        return len(self._guests)

    def __contains__(self, name: object) -> bool:
        return name in self._guests

    # the dict's own views and lookup: Mapping's would call __getitem__ per guest
    def keys(self) -> KeysView[str]:
        return self._guests.keys()

    def values(self) -> ValuesView[Guest]:
        return self._guests.values()

    def items(self) -> ItemsView[str, Guest]:
        return self._guests.items()

    def get(self, name: str, default: Any = None) -> Any:
        return self._guests.get(name, default)

    def __repr__(self) -> str:
        return f"<ParsedGuests of {len(self)} guests>"

    def hosts(self) -> dict[str, str | None]:
        if self._placed is None:
            self._placed = {name: guest.host for name, guest in self._guests.items()}
        return self._placed

    def mac_users(self, mac: str) -> list[tuple[str, int]]:
        if self._by_mac is None:
            self._by_mac = {}
            for guest in self._guests.values():
                for nic in guest.nics:
                    self._by_mac.setdefault(nic.mac, []).append((guest.name, nic.index))
        return list(self._by_mac.get(mac, ()))
