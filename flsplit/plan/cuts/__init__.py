"""Joint per-client cuts: the cut problem, its optimizers, bounds and shared links."""
