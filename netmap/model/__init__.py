"""The model: what the mappings say (fleet.py: hosts, uplinks, networks, guests), what
discovery saw (inventory.py), and the rules for names and values every reader shares.
Pure data: frozen dataclasses, no I/O."""
