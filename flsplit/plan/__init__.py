"""Planning: instances, evaluator, solvers and lower bounds (no torch, no flwr)."""
