"""Test frames between endpoints, for the namespace tier and the VM tier alike
(tests/vm/vmhost.py puts this folder on the path)."""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Callable

ETHERTYPE = 0x88B5  # IEEE local experimental: nothing in a lab answers or forwards it oddly


def frame(dst: str, src: str, payload: bytes) -> bytes:
    def mac(text: str) -> bytes:
        return bytes.fromhex(text.replace(":", ""))
    return mac(dst) + mac(src) + struct.pack("!H", ETHERTYPE) + payload.ljust(46, b"\0")


def wait_for(read: tuple[int, Callable[[], bytes]], token: bytes, send: Callable[[], object],
             timeout: float = 5.0) -> bool:
    """Send (again every 200 ms) and read frames until one carries `token` (True) or the
    timeout passes (False). Resending, like ping, because a tap just opened becomes a
    forwarding bridge port only when linkwatch gets to its carrier change, a moment later."""
    fileno, reader = read
    poller = select.poll()
    poller.register(fileno, select.POLLIN)
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            send()
            next_send = time.monotonic() + 0.2
        if not poller.poll(50):
            continue
        try:
            data = reader()
        except BlockingIOError:
            continue
        if token in data:
            return True
    return False
