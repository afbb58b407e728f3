"""Global sampling: samplers of per-step batch composition and the synchronous schedule."""
