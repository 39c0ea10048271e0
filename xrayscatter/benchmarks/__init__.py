"""Benchmarks: rates measured side by side in one run, printed as tables (never timed assertions)."""
