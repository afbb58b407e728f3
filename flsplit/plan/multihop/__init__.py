"""Multi-hop placement: one client's model over a chain of helpers, micro-batch size."""
