"""Forked work: what the child sends arrives whole and in order, and a child that fails
is a None or a ChildFailed, never a wrong value."""

from __future__ import annotations

import os
import threading

import pytest

from netmap.forked import ChildFailed, ForkedWork

pytestmark = pytest.mark.skipif(
    threading.active_count() > 1 or len(os.sched_getaffinity(0)) < 2,
    reason="work is forked only without threads and with a second CPU")


def test_result_of_simple_work() -> None:
    work = ForkedWork.start(lambda: {"pid": os.getpid(), "big": b"x" * (3 << 20)})
    assert work is not None
    value = work.result()
    assert value["pid"] != os.getpid() and len(value["big"]) == 3 << 20


def test_messages_both_ways_in_order() -> None:
    def talk(link):
        asked = link.receive()
        link.send(("first", asked * 2))
        link.send(("second", b"y" * (1 << 20)))  # more than a pipe holds
        return "last"

    work = ForkedWork.start(talk, talk=True)
    assert work is not None
    assert work.send(21)
    assert work.receive() == ("first", 42)
    assert work.receive()[1] == b"y" * (1 << 20)
    assert work.result() == "last"


def test_failed_child_is_none_or_child_failed() -> None:
    def fails(link):
        link.send("before")
        raise RuntimeError("boom")

    work = ForkedWork.start(fails, talk=True)
    assert work is not None
    assert work.receive() == "before"
    with pytest.raises(ChildFailed):
        work.receive()
    assert work.result() is None
    assert ForkedWork.start(lambda: 1 / 0).result() is None


def test_cancel_ends_a_child_that_waits() -> None:
    work = ForkedWork.start(lambda link: link.receive(), talk=True)
    assert work is not None
    work.cancel()
    with pytest.raises(ChildProcessError):
        os.waitpid(work.pid, os.WNOHANG)  # reaped


def test_child_lets_go_of_our_output() -> None:
    """A child may outlive us (netmap/cache.py): it must not hold our stdout open."""
    work = ForkedWork.start(lambda: [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)])
    assert work is not None
    assert work.result() == [os.devnull] * 3
