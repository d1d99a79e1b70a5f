"""Benchmarks against a real local registry (`make bench`)."""
