"""Benchmarks of the engines (not product code): each reports JSON with ratios against a
baseline measured in the same run; `dfstream bench scorer|train` runs them."""
