"""The one rtnetlink client: namespaces, the route socket, dumps, pipelined requests.

Why not pyroute2 for these: `IPRoute.link()` costs one round trip plus pyroute2's generic
encoder per call, so many endpoints take several times `ip -batch`; its get_links() decodes
every attribute of every link, and importing it is a large part of a short command's
start-up (README's Benchmarks has the figures). Here each request
is packed with struct (rtmsg.py), a whole batch goes to the kernel in one sendmsg
(rtnetlink handles every message of a datagram in turn, acking each), and the acks are
matched back by sequence number; a dump is parsed in place, decoding only what is kept.
pyroute2 still does the one rare call (SR-IOV VF entries on a PF).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

from netmap.netlink.rtmsg import (
    AF_BRIDGE,
    AF_UNSPEC,
    F_ACK,
    F_ACK_TLVS,
    F_DUMP,
    F_DUMP_INTR,
    F_REQUEST,
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDRMSG,
    IFF_MULTI_QUEUE,
    IFF_NO_PI,
    IFF_TAP,
    IFF_VNET_HDR,
    IFINFOMSG,
    IFLA_AF_SPEC,
    IFLA_BRIDGE_VLAN_INFO,
    IFLA_EXT_MASK,
    IFLA_IFNAME,
    IFREQ,
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_ROUTE,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGERR_ATTR_MSG,
    NLMSGHDR,
    RT_SCOPE_UNIVERSE,
    RTEXT_FILTER_BRVLAN,
    RTEXT_FILTER_SKIP_STATS,
    RTM_GETADDR,
    RTM_GETLINK,
    SOL_NETLINK,
    TUNSETIFF,
    TUNSETPERSIST,
    Link,
    _str,
    _u32,
    attr_spans,
    ifinfo,
    iter_attrs,
    parse_link,
    span_ip,
    span_str,
)

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SO_RCVBUFFORCE = 33
CHUNK = 16 * 1024  # bytes of requests per sendmsg, well under the socket's send buffer
RECV_BUFFER = 1 << 20
DUMP_ATTEMPTS = 5
TUN_DEVICE = "/dev/net/tun"


class NetlinkError(OSError):
    """A request the kernel refused: errno plus the kernel's extended-ack message."""

    def __init__(self, code: int, message: str = "") -> None:
        text = os.strerror(code) + (f" ({message})" if message else "")
        super().__init__(code, text)


class DumpInterrupted(NetlinkError):
    """Every attempt at a dump was interrupted by changes (NLM_F_DUMP_INTR)."""

    def __init__(self, kind: int) -> None:
        table = {RTM_GETLINK: "link", RTM_GETADDR: "address"}.get(kind, f"type {kind}")
        super().__init__(errno.EAGAIN, f"the kernel's {table} table changed during each of "
                         f"{DUMP_ATTEMPTS} dumps (NLM_F_DUMP_INTR), so no consistent view "
                         "could be read; something is changing interfaces right now: try "
                         "again once it has finished")


_libc = ctypes.CDLL(None, use_errno=True)


# --- network namespaces --------------------------------------------------------------------

def netns_path(netns: str) -> Path:
    """`ip netns` names live in /run/netns; a path (/proc/PID/ns/net) is taken as is."""
    return Path(netns) if "/" in netns else Path("/run/netns") / netns


def _open_netns(netns: str) -> int:
    try:
        return os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise NetlinkError(errno.ENOENT, f"network namespace {netns} does not exist") from err


def _setns(fd: int, netns: str) -> None:
    """setns(CLONE_NEWNET) moves the calling thread only. A plain OSError, so that EPERM
    (no CAP_SYS_ADMIN) arrives as PermissionError."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot enter network namespace {netns}: {os.strerror(code)}")


@contextlib.contextmanager
def entered_netns(netns: str | None) -> Iterator[None]:
    """Run the block with this thread inside network namespace `netns` (None: stay).

    Only sockets and /dev/net/tun descriptors are opened inside: they keep the namespace
    they were created in after the thread returns to its own."""
    if not netns:
        yield
        return
    target = _open_netns(netns)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, netns)
            try:
                yield
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:  # never keep running in the wrong one
                    raise SystemExit(f"netmap: cannot return from network namespace {netns}")
        finally:
            os.close(own)
    finally:
        os.close(target)


def enter_netns(netns: str) -> None:
    """Move this thread into `netns` for good (a short-lived process: the QEMU helper)."""
    target = _open_netns(netns)
    try:
        _setns(target, netns)
    finally:
        os.close(target)


# --- tun -----------------------------------------------------------------------------------

def open_tun(name: str, flags: int) -> int:
    """An fd of /dev/net/tun attached to interface `name` (TUNSETIFF with IFF_* `flags`);
    made if missing, gone with its last fd unless made persistent. An OSError with
    .filename set means /dev/net/tun itself could not be opened."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(name.encode(), flags))
    except BaseException:
        os.close(fd)
        raise
    return fd


class Rtnl:
    """One rtnetlink socket in one namespace; close() it (or use `with`)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        with entered_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            self._configure()
        except BaseException:  # a caller that gets no Rtnl cannot close its socket
            self.sock.close()
            raise
        self.seq = 0
        self._view = memoryview(bytearray(RECV_BUFFER))

    def _configure(self) -> None:
        # room for the acks of a whole chunk, and for a dump of thousands of links, which
        # arrives faster than Python reads it; FORCE passes rmem_max as root
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.bind((0, 0))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pack(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
        self.seq += 1
        return self.seq, NLMSGHDR.pack(16 + len(body), kind, flags | F_REQUEST,
                                       self.seq, 0) + body

    def _messages(self) -> Iterator[tuple[int, int, int, bytes, int, int]]:
        """The messages of one datagram: (type, flags, seq, buffer, payload start, end).
        Payloads are read in place, never copied out one by one."""
        size = self.sock.recv_into(self._view)
        data = bytes(self._view[:size])
        offset = 0
        while offset + 16 <= size:
            length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
            if length < 16:
                return
            yield kind, flags, seq, data, offset + 16, offset + length
            offset += (length + 3) & ~3

    def _error(self, flags: int, data: bytes, start: int, end: int) -> NetlinkError | None:
        """The refusal an NLMSG_ERROR carries, or None for an ack (error code 0)."""
        code = struct.unpack_from("i", data, start)[0]
        return NetlinkError(-code, _ext_message(flags, data[start:end])) if code else None

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
            for kind, flags, seq, data, start, end in self._messages():
                if kind == NLMSG_ERROR and seq in pending:
                    results[pending.pop(seq)] = self._error(flags, data, start, end)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def call(self, request: tuple[int, int, bytes]) -> None:
        error = self.batch([request])[0]
        if error is not None:
            raise error

    def dump(self, kind: int, body: bytes, parse: Callable[[bytes, int, int], T]) -> list[T]:
        """A dump request (RTM_GET*) and parse(buffer, start, end) of each RTM_NEW* reply.

        A dump is not atomic: when the table changes while it runs, the kernel flags a
        message NLM_F_DUMP_INTR and the result may hold stale or missing entries; then it
        is dumped again, up to DUMP_ATTEMPTS times; a table that never holds still is an
        error (DumpInterrupted), never a silently inconsistent answer."""
        for _ in range(DUMP_ATTEMPTS):
            out, interrupted = self._dump_once(kind, body, parse)
            if not interrupted:
                return out
        raise DumpInterrupted(kind)

    def _dump_once(self, kind: int, body: bytes, parse: Callable[[bytes, int, int], T],
                   ) -> tuple[list[T], bool]:
        seq, message = self._pack(kind, F_DUMP, body)
        self.sock.send(message)
        reply = kind - 2  # RTM_GETLINK is answered by RTM_NEWLINK messages, and so on
        out: list[T] = []
        interrupted = False
        while True:
            for got_kind, flags, got, data, start, end in self._messages():
                if got != seq:
                    continue
                interrupted = interrupted or bool(flags & F_DUMP_INTR)
                if got_kind == NLMSG_DONE:
                    return out, interrupted
                if got_kind == NLMSG_ERROR:
                    error = self._error(flags, data, start, end)
                    if error is not None:
                        raise error
                elif got_kind == reply:
                    out.append(parse(data, start, end))

    # a generic parameter cannot have a default of one type: without `parse`, Links
    @overload
    def dump_links(self, *, family: int = ..., ext_mask: int = ...) -> list[Link]: ...
    @overload
    def dump_links(self, parse: Callable[[bytes, int, int], T], *, family: int = ...,
                   ext_mask: int = ...) -> list[T]: ...

    def dump_links(self, parse: Callable[[bytes, int, int], Any] = parse_link,
                   *, family: int = AF_UNSPEC, ext_mask: int = RTEXT_FILTER_SKIP_STATS,
                   ) -> list[Any]:
        """Every link of the namespace, each through `parse` (rtmsg.parse_link: a Link);
        without the counters, the bulk of a link message, unless `ext_mask` says else."""
        body = ifinfo(family=family) + (_u32(IFLA_EXT_MASK, ext_mask) if ext_mask else b"")
        return self.dump(RTM_GETLINK, body, parse)

    def addresses(self, scopes: tuple[int, ...] = (RT_SCOPE_UNIVERSE,)) -> dict[int, list[str]]:
        """ifindex -> its addresses of these scopes ("10.0.0.1/24"); by default global
        ones only, link- and host-local left out."""
        out: dict[int, list[str]] = {}
        for index, scope, address in self.dump(RTM_GETADDR, IFADDRMSG.pack(AF_UNSPEC, 0, 0, 0, 0),
                                               _parse_address):
            if scope in scopes and address:
                out.setdefault(index, []).append(address)
        return out

    def get(self, name: str) -> Link | None:
        """One interface by name, or None when there is none."""
        seq, message = self._pack(RTM_GETLINK, 0, ifinfo() + _str(IFLA_IFNAME, name))
        self.sock.send(message)
        while True:
            for kind, flags, got, data, start, end in self._messages():
                if got != seq:
                    continue
                if kind == NLMSG_ERROR:
                    error = self._error(flags, data, start, end)
                    if error is None or error.errno == errno.ENODEV:
                        return None
                    raise error
                return parse_link(data, start, end)

    def links(self) -> dict[str, Link]:
        """Every interface of the namespace by name: one dump, without the counters."""
        return {link.name: link for link in self.dump_links()}

    def bridge_vlans(self) -> dict[str, dict[int, int]]:
        """Port name -> {vid: flags} of every bridge port with VLANs: one dump."""
        ports = self.dump_links(_parse_port_vlans, family=AF_BRIDGE,
                                ext_mask=RTEXT_FILTER_BRVLAN)
        return {name: vids for name, vids in ports if vids}

    def create_taps(self, names: Sequence[str], multi_queue: Sequence[str] = (),
                    ) -> list[OSError | None]:
        """Persistent taps, as QEMU opens them (no packet info, virtio-net header); those
        named in `multi_queue` with IFF_MULTI_QUEUE, for a guest NIC with several queues."""
        results: list[OSError | None] = []
        with entered_netns(self.netns):
            for name in names:
                queues = IFF_MULTI_QUEUE if name in multi_queue else 0
                try:
                    fd = open_tun(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | queues)
                except OSError as err:
                    results.append(err)
                    continue
                try:
                    fcntl.ioctl(fd, TUNSETPERSIST, 1)
                    results.append(None)
                except OSError as err:
                    results.append(err)
                finally:
                    os.close(fd)
        return results


def _parse_port_vlans(buf: bytes, offset: int, end: int) -> tuple[str, dict[int, int]]:
    """An AF_BRIDGE link message: the port's name and its {vid: flags}."""
    attrs = attr_spans(buf, offset + IFINFOMSG.size, end)
    vids: dict[int, int] = {}
    if IFLA_AF_SPEC in attrs:
        for kind, start, _ in iter_attrs(buf, *attrs[IFLA_AF_SPEC]):
            if kind == IFLA_BRIDGE_VLAN_INFO:
                flags, vid = struct.unpack_from("HH", buf, start)
                vids[vid] = flags
    return span_str(buf, attrs[IFLA_IFNAME]), vids


def _parse_address(buf: bytes, offset: int, end: int) -> tuple[int, int, str | None]:
    """An RTM_NEWADDR message: (ifindex, scope, "address/prefix")."""
    _family, prefix, _flags, scope, index = IFADDRMSG.unpack_from(buf, offset)
    attrs = attr_spans(buf, offset + IFADDRMSG.size, end)
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on point-to-point
    address = span_ip(buf, attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS))
    return index, scope, f"{address}/{prefix}" if address else None


def _ext_message(flags: int, payload: bytes) -> str:
    """The kernel's extended-ack text (NLMSGERR_ATTR_MSG), when it sent one."""
    if not flags & F_ACK_TLVS:
        return ""
    # error code (4) + the request's header (16), capped by NETLINK_CAP_ACK
    for kind, start, stop in iter_attrs(payload, 20, len(payload)):
        if kind == NLMSGERR_ATTR_MSG:
            return span_str(payload, (start, stop))
    return ""
