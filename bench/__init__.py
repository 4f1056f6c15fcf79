"""Benchmarks: `python -m bench.NAME` prints one JSON line of figures last."""
