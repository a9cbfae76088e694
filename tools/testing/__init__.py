"""Helpers shared by the tests, the benchmarks and the demo: real processes, free ports."""
