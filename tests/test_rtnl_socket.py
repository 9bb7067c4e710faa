"""rtnl's socket handling where the kernel cannot be made to misbehave on demand: a dump
interrupted on every attempt, and a socket option refused while opening. No root needed:
the socket is a fake that speaks just enough netlink."""

from __future__ import annotations

import socket
import struct
from types import SimpleNamespace
from typing import ClassVar

import pytest
from pyroute2.netlink import NLM_F_MULTI

from netmap.netlink import rtnl
from netmap.netlink.rtmsg import (
    F_DUMP_INTR,
    NLMSG_DONE,
    NLMSGHDR,
    RTM_GETLINK,
    RTM_NEWLINK,
    ifinfo,
)


class DumpingSocket:
    """Answers each dump request with two links and DONE; the first `interrupted` dumps
    carry NLM_F_DUMP_INTR, as when the table changes while the kernel walks it."""

    def __init__(self, interrupted: int) -> None:
        self.interrupted = interrupted
        self.requests = 0
        self.replies: list[bytes] = []

    def send(self, data: bytes) -> int:
        seq = NLMSGHDR.unpack_from(data)[3]
        self.requests += 1
        flags = NLM_F_MULTI | (F_DUMP_INTR if self.requests <= self.interrupted else 0)
        body = ifinfo(index=self.requests)
        links = b"".join(NLMSGHDR.pack(16 + len(body), RTM_NEWLINK, flags, seq, 0) + body
                         for _ in range(2))
        self.replies.append(links + NLMSGHDR.pack(20, NLMSG_DONE, flags, seq, 0)
                            + struct.pack("i", 0))
        return len(data)

    def recv_into(self, view: memoryview) -> int:
        reply = self.replies.pop(0)
        view[:len(reply)] = reply
        return len(reply)


def fake_rtnl(sock: object) -> rtnl.Rtnl:
    kernel = rtnl.Rtnl.__new__(rtnl.Rtnl)
    kernel.netns, kernel.sock, kernel.seq = None, sock, 0
    kernel._view = memoryview(bytearray(rtnl.RECV_BUFFER))
    return kernel


def dump(kernel: rtnl.Rtnl) -> list[int]:
    return kernel.dump(RTM_GETLINK, ifinfo(), lambda buf, start, _end: buf[start + 4])


def test_an_interrupted_dump_is_retried() -> None:
    sock = DumpingSocket(interrupted=rtnl.DUMP_ATTEMPTS - 1)
    assert dump(fake_rtnl(sock)) == [rtnl.DUMP_ATTEMPTS] * 2  # the one clean attempt
    assert sock.requests == rtnl.DUMP_ATTEMPTS


def test_a_dump_interrupted_every_time_is_an_error_not_a_stale_answer() -> None:
    sock = DumpingSocket(interrupted=rtnl.DUMP_ATTEMPTS)
    with pytest.raises(rtnl.DumpInterrupted) as caught:
        dump(fake_rtnl(sock))
    assert sock.requests == rtnl.DUMP_ATTEMPTS
    assert isinstance(caught.value, OSError)  # callers turn it into their own error
    message = str(caught.value)
    assert "link table changed during each of 5 dumps" in message
    assert "try again" in message


class RefusingSocket:
    """A socket whose option `refused` fails, as on a kernel without NETLINK_EXT_ACK."""

    instances: ClassVar[list[RefusingSocket]] = []

    def __init__(self, *_args: object, refused: int = rtnl.NETLINK_EXT_ACK) -> None:
        self.refused, self.closed = refused, False
        RefusingSocket.instances.append(self)

    def setsockopt(self, _level: int, option: int, _value: int) -> None:
        if option == self.refused:
            raise OSError(92, "Protocol not available")

    def bind(self, _address: object) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_a_refused_socket_option_closes_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace(**{k: getattr(socket, k) for k in dir(socket) if k.isupper()},
                           socket=RefusingSocket)
    monkeypatch.setattr(rtnl, "socket", fake)
    RefusingSocket.instances.clear()
    with pytest.raises(OSError, match="Protocol not available"):
        rtnl.Rtnl()
    [sock] = RefusingSocket.instances
    assert sock.closed
