"""Benchmark tooling outside the library: the timing harness (`python -m benchmarks.benchmark`)
and the PyTorch twins it times against. Not packaged; `pip install -e ".[bench]"` adds torch."""
