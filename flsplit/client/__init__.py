"""The client and helper roles: the ClientApp wiring, node settings and both handlers."""
