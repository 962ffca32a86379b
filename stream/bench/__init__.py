"""Benchmarks of the service's stages (not product code): each measures against a baseline
run in the same process and reports JSON; `dfstream bench ...` (stream/commands/bench.py) runs them.
"""
