"""QEMU integration: a helper that speaks QEMU's bridge-helper protocol for logical networks.

`qemu-system-x86_64 -netdev bridge,id=n0,br=prod,helper=netmap-qemu-helper` attaches the
guest to the logical network `prod` as this host's mapping realizes it; `acl` decides which
networks the helper serves, `helper` speaks the protocol, netmap/netlink/tapfd.py does the
kernel work.
"""
