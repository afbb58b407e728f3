"""Benchmarks and experiments, run from a checkout as ``python -m benchmarks.NAME``.

Not part of the installed package.
"""
