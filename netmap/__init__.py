"""netmap: migration-aware networking for virtual machines.

Kept free of imports: `netmap --version`, `--help` and the libvirt hook's pass-through path
must start without networkx, rich or pyroute2.
"""

__version__ = "0.1.0"
