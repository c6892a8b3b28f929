"""Helpers shared by the tests and the benchmarks: real databases, real service processes, tiny specs."""
