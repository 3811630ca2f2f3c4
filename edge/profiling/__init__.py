"""Latency (profiler.py) and, with the screening-station issue, power readers per board."""
