"""Benchmarks of attnlab's own code paths, kept out of the library they measure: ``speed`` (time and memory)."""
