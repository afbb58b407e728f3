"""flsplit multihop: helper chains planned every round, on emulated edge devices and links."""
