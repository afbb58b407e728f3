"""flsplit heterogeneous: every round planned, on emulated edge devices and links."""
