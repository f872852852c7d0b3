"""Benchmarks: the tamper × detector matrix over real and synthetic scans, and its HTML report."""
