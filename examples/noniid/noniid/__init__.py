"""flsplit non-IID: global sampling against local batches, 2 classes per client."""
