"""Faults injected into realize's netlink traffic: one send of the rtnetlink socket in turn
raises Ctrl-C (before or after the kernel got it) or fails half-way through a pipelined
batch. Shared by the namespace tier (test_rollback_signals) and the VM tier
(tests/vm/test_rollback_vm.py; tests/vm/vmhost.py puts this folder on the path)."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from netmap.errors import ApplyError
from netmap.netlink import rtnl
from netmap.netlink.apply import realize_plan


class FaultySocket:
    """The rtnetlink socket, with a fault at the `at`-th send (counted over all sockets
    in `sends`): `fault(sock, data)` runs in place of that send."""

    def __init__(self, sock, sends: list[int], at: int, fault) -> None:
        self._sock, self._sends, self._at, self._fault = sock, sends, at, fault

    def send(self, data: bytes) -> int:
        self._sends[0] += 1
        if self._sends[0] == self._at:
            return self._fault(self._sock, data)
        return self._sock.send(data)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def faulty_kernel(monkeypatch: pytest.MonkeyPatch, at: int, fault) -> list[int]:
    """Every Rtnl realize opens gets a FaultySocket; returns the send counter."""
    sends = [0]
    plain = rtnl.Rtnl

    class Faulty(plain):  # type: ignore[misc, valid-type]
        def __init__(self, netns: str | None = None) -> None:
            super().__init__(netns)
            self.sock = FaultySocket(self.sock, sends, at, fault)

    monkeypatch.setattr(rtnl, "Rtnl", Faulty)
    return sends


def realize_counting_sends(plan) -> int:
    """Realize `plan` with no fault, every netlink send counted: how many a fault can hit."""
    with pytest.MonkeyPatch.context() as patch:
        sends = faulty_kernel(patch, 0, None)
        assert realize_plan(plan).changed
    return sends[0]


def realize_with_fault(plan, at: int, fault) -> None:
    """Realize `plan` with `fault` at the `at`-th netlink send; it must end in an
    ApplyError saying every change was undone (or, interrupted while still deciding, that
    nothing was changed), or, at the first send only, before the transaction exists, in the
    interrupt itself. Whether the host is as before is the caller's to check."""
    with pytest.MonkeyPatch.context() as patch, \
            pytest.raises((ApplyError, KeyboardInterrupt)) as caught:
        faulty_kernel(patch, at, fault)
        realize_plan(plan)
    if isinstance(caught.value, ApplyError):
        problem = caught.value.problem
        assert ("every change was undone" in problem
                or "nothing was changed" in problem), problem
    else:  # only before the transaction exists: nothing was touched yet
        assert at == 1, f"{fault.__name__} at send {at}: {caught.value!r}"


def interrupt_after(sock, data: bytes) -> int:
    """Ctrl-C arriving once the kernel has the request, before its ack is read."""
    sock.send(data)
    raise KeyboardInterrupt


def interrupt_before(sock, data: bytes) -> int:
    raise KeyboardInterrupt


def enobufs_half_way(sock, data: bytes) -> int:
    """The kernel processes the first half of the requests, then the send fails."""
    offsets, at = [], 0
    while at + 16 <= len(data):
        offsets.append(at)
        at += (int.from_bytes(data[at:at + 4], sys.byteorder) + 3) & ~3
    half = offsets[len(offsets) // 2] if len(offsets) > 1 else len(data)
    sock.send(data[:half])
    raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
