"""Benchmarks: mechakit drivers against their raw client libraries doing the same work."""
