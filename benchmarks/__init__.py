"""Benchmarks for midvary: run with `make bench`; they report figures and are never tests."""
