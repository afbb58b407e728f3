"""Assignment and scheduling with fixed cuts: solvers, baselines, bounds, round prediction."""
