"""The model's frozen dataclasses: as frozen as ever, pickled as constructor calls."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from netmap.model.fleet import Binding, Host, Source, SriovPool, Uplink, frozen


def test_frozen_init_is_the_dataclass_init() -> None:
    binding = Binding("prod", "bridge", "eth0", vlan=100)
    assert (binding.network, binding.mode, binding.uplink, binding.vlan) == (
        "prod", "bridge", "eth0", 100)
    assert (binding.bridge, binding.vf_attach, binding.spoofchk) == (None, "hostdev", True)
    assert binding == Binding("prod", "bridge", "eth0", None, 100)
    assert dataclasses.replace(binding, vlan=200).vlan == 200
    with pytest.raises(TypeError):
        Binding("prod", "bridge")  # a required field missing
    with pytest.raises(TypeError):
        Binding("prod", "bridge", "eth0", colour="red")


def test_instances_stay_frozen_and_hashable() -> None:
    uplink = Uplink("eth0", ("dc1",), 9000, source=Source("hosts/a.toml", 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        uplink.mtu = 1500  # type: ignore[misc]
    assert hash(uplink) == hash(Uplink("eth0", ("dc1",), 9000))  # source: compare=False
    assert pickle.loads(pickle.dumps(uplink)) == uplink


def test_default_factories_give_each_instance_its_own() -> None:
    one, two = Host("a"), Host("b")
    assert one.uplinks == {}
    assert one.uplinks is not two.uplinks


def test_frozen_keeps_field_options() -> None:
    @frozen
    class Thing:
        name: str
        tags: tuple[str, ...] = ()
        note: str = dataclasses.field(default="", compare=False)

    assert Thing("x", note="a") == Thing("x", note="b")
    assert Thing("x").tags == ()
    assert repr(Thing("x")).endswith("Thing(name='x', tags=(), note='')")


def test_instances_pickle_as_constructor_calls() -> None:
    binding = Binding("prod", "bridge", "eth0", vlan=100, source=Source("hosts/a.toml", 9))
    rebuild, args = binding.__reduce__()
    assert rebuild is Binding
    assert args == ("prod", "bridge", "eth0", None, 100, None,
                                           "hostdev", True, None, Source("hosts/a.toml", 9),
                                           (), None, None)
    assert pickle.loads(pickle.dumps(binding)) == binding
    pool = SriovPool(8)  # one field: still a tuple of arguments
    assert pool.__reduce__() == (SriovPool, (8,))
    assert pickle.loads(pickle.dumps(pool)) == pool
