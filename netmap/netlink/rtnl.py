"""A small rtnetlink client for realize's hot path: link dumps and pipelined requests.

Why not pyroute2 for these: realizing 1000 endpoints through `IPRoute.link()` costs one
round trip plus pyroute2's generic encoder per call (≈1.4 ms each, issue 3), three times
`ip -batch`. Here each request is packed with struct (rtmsg.py), a whole batch goes to the
kernel in one sendmsg (rtnetlink handles every message of a datagram in turn, acking each),
and the acks are matched back by sequence number. Only the few attributes realize needs are
encoded or decoded; pyroute2 still does the one rare call (SR-IOV VF entries on a PF).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator, Sequence

from netmap.netlink.rtmsg import (
    AF_BRIDGE,
    AF_UNSPEC,
    F_ACK,
    F_ACK_TLVS,
    F_DUMP,
    F_REQUEST,
    IFA_ADDRESS,
    IFA_LOCAL,
    IFF_NO_PI,
    IFF_TAP,
    IFF_VNET_HDR,
    IFLA_AF_SPEC,
    IFLA_BRIDGE_VLAN_INFO,
    IFLA_EXT_MASK,
    IFLA_IFNAME,
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_ROUTE,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGERR_ATTR_MSG,
    RT_SCOPE_UNIVERSE,
    RTEXT_FILTER_BRVLAN,
    RTEXT_FILTER_SKIP_STATS,
    RTM_GETADDR,
    RTM_GETLINK,
    SOL_NETLINK,
    TUNSETIFF,
    TUNSETPERSIST,
    Link,
    _attrs,
    _cstr,
    _parse_link,
    _str,
    _u32,
    ifinfo,
)

CLONE_NEWNET = 0x40000000
SO_RCVBUFFORCE = 33
CHUNK = 16 * 1024  # bytes of requests per sendmsg, well under the socket's send buffer


class NetlinkError(OSError):
    """A request the kernel refused: errno plus the kernel's extended-ack message."""

    def __init__(self, code: int, message: str = "") -> None:
        text = os.strerror(code) + (f" ({message})" if message else "")
        super().__init__(code, text)
        self.kernel_message = message


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def entered_netns(netns: str | None) -> Iterator[None]:
    """Run the block with this thread inside network namespace `netns` (None: stay).

    Only sockets and /dev/net/tun descriptors are opened inside: they keep the namespace
    they were created in after the thread returns to its own."""
    if not netns:
        yield
        return
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    except FileNotFoundError as err:
        raise NetlinkError(errno.ENOENT, f"network namespace {netns} does not exist") from err
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise NetlinkError(ctypes.get_errno(), f"cannot enter network namespace {netns}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # never keep running in the wrong one
                raise SystemExit(f"netmap: cannot return from network namespace {netns}")
    finally:
        os.close(target)
        os.close(own)


class Rtnl:
    """One rtnetlink socket in one namespace; close() it (or use `with`)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        with entered_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:  # room for the acks of a whole chunk; FORCE passes rmem_max as root
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pack(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
        self.seq += 1
        return self.seq, struct.pack("IHHII", 16 + len(body), kind, flags | F_REQUEST,
                                     self.seq, 0) + body

    def _messages(self) -> Iterator[tuple[int, int, int, bytes]]:
        data = self.sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(data):
            size, kind, flags, seq, _pid = struct.unpack_from("IHHII", data, offset)
            yield kind, flags, seq, data[offset + 16:offset + size]
            offset += (size + 3) & ~3

    def batch(self, requests: Sequence[tuple[int, int, bytes]]) -> list[NetlinkError | None]:
        """Send every request, acked, pipelined; one result per request, in order."""
        results: list[NetlinkError | None] = [None] * len(requests)
        pending: dict[int, int] = {}
        buffer = b""
        for position, (kind, flags, body) in enumerate(requests):
            seq, message = self._pack(kind, flags | F_ACK, body)
            pending[seq] = position
            buffer += message
            if len(buffer) >= CHUNK:
                self.sock.send(buffer)
                buffer = b""
                self._drain(pending, results, keep=True)
        if buffer:
            self.sock.send(buffer)
        while pending:
            self._drain(pending, results, keep=False)
        return results

    def _drain(self, pending: dict[int, int], results: list[NetlinkError | None], *,
               keep: bool) -> None:
        """Collect acks; with `keep`, only what has already arrived (never block)."""
        if keep:
            self.sock.setblocking(False)
        try:
            for kind, flags, seq, payload in self._messages():
                if kind != NLMSG_ERROR or seq not in pending:
                    continue
                code = struct.unpack_from("i", payload)[0]
                position = pending.pop(seq)
                if code:
                    results[position] = NetlinkError(-code, _ext_message(flags, payload))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def call(self, request: tuple[int, int, bytes]) -> None:
        error = self.batch([request])[0]
        if error is not None:
            raise error

    def _dump(self, kind: int, body: bytes) -> list[bytes]:
        seq, message = self._pack(kind, F_DUMP, body)
        self.sock.send(message)
        out = []
        while True:
            for got_kind, flags, got, payload in self._messages():
                if got != seq:
                    continue
                if got_kind == NLMSG_DONE:
                    return out
                if got_kind == NLMSG_ERROR:
                    code = struct.unpack_from("i", payload)[0]
                    raise NetlinkError(-code, _ext_message(flags, payload))
                out.append(payload)

    def dump(self, *, family: int = AF_UNSPEC, ext_mask: int = 0) -> list[tuple[Link, bytes]]:
        body = ifinfo(family=family) + (_u32(IFLA_EXT_MASK, ext_mask) if ext_mask else b"")
        return [(_parse_link(payload), payload) for payload in self._dump(RTM_GETLINK, body)]

    def addresses(self) -> dict[int, list[str]]:
        """ifindex -> its addresses of global scope ("10.0.0.1/24"); link-local left out."""
        out: dict[int, list[str]] = {}
        for payload in self._dump(RTM_GETADDR, struct.pack("BBBBI", AF_UNSPEC, 0, 0, 0, 0)):
            family, prefix, _flags, scope, index = struct.unpack_from("BBBBI", payload)
            attrs = dict(_attrs(payload, 8))
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if scope != RT_SCOPE_UNIVERSE or raw is None:
                continue
            address = socket.inet_ntop(socket.AF_INET if family == socket.AF_INET
                                       else socket.AF_INET6, raw)
            out.setdefault(index, []).append(f"{address}/{prefix}")
        return out

    def get(self, name: str) -> Link | None:
        """One interface by name, or None when there is none."""
        seq, message = self._pack(RTM_GETLINK, 0, ifinfo() + _str(IFLA_IFNAME, name))
        self.sock.send(message)
        while True:
            for kind, flags, got, payload in self._messages():
                if got != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("i", payload)[0]
                    if code == errno.ENODEV:
                        return None
                    raise NetlinkError(code, _ext_message(flags, payload))
                return _parse_link(payload)

    def links(self) -> dict[str, Link]:
        """Every interface of the namespace by name: one dump, without the counters."""
        return {link.name: link for link, _ in self.dump(ext_mask=RTEXT_FILTER_SKIP_STATS)}

    def bridge_vlans(self) -> dict[str, dict[int, int]]:
        """Port name -> {vid: flags} of every bridge port with VLANs: one dump."""
        out: dict[str, dict[int, int]] = {}
        for link, payload in self.dump(family=AF_BRIDGE, ext_mask=RTEXT_FILTER_BRVLAN):
            for kind, value in _attrs(payload, 16):
                if kind != IFLA_AF_SPEC:
                    continue
                for sub, info in _attrs(value):
                    if sub == IFLA_BRIDGE_VLAN_INFO:
                        flags, vid = struct.unpack("HH", info[:4])
                        out.setdefault(link.name, {})[vid] = flags
        return out

    def create_taps(self, names: Sequence[str]) -> list[OSError | None]:
        """Persistent taps, as QEMU opens them (no packet info, virtio-net header)."""
        results: list[OSError | None] = []
        with entered_netns(self.netns):
            for name in names:
                try:
                    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
                except OSError as err:
                    results.append(err)
                    continue
                try:
                    flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
                    ifreq = struct.pack("16sH22x", name.encode(), flags)
                    fcntl.ioctl(fd, TUNSETIFF, ifreq)
                    fcntl.ioctl(fd, TUNSETPERSIST, 1)
                    results.append(None)
                except OSError as err:
                    results.append(err)
                finally:
                    os.close(fd)
        return results


def _ext_message(flags: int, payload: bytes) -> str:
    """The kernel's extended-ack text (NLMSGERR_ATTR_MSG), when it sent one."""
    if not flags & F_ACK_TLVS:
        return ""
    # error code (4) + the request's header (16), capped by NETLINK_CAP_ACK
    for kind, value in _attrs(payload, 20):
        if kind == NLMSGERR_ATTR_MSG:
            return _cstr(value)
    return ""
