"""Benchmarks: time to test accuracy for the fast recipe vs a seed-style
baseline, and Lightning's overhead."""
