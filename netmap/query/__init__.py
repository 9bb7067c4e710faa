"""Questions asked of the whole fleet: its graph, hosts-for, drain, where guests run. Pure."""
