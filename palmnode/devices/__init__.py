"""One actor per device: keeps its driver open, turns readings into bus events, reports health."""
