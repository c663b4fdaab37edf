"""mail2ticket benchmark suite: `python -m bench` (see docs/benchmarks.md).

Not part of the daemon. Every benchmark drives the real program (the daemon as a subprocess, the real CLI,
the real Processor and Router) against a generated corpus and reports medians and ratios to a floor that
is measured in the same run.
"""
