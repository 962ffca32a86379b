#!/usr/bin/env python3
"""Heatmap benchmark: ms per alert heatmap on the CPU against the plain forward pass.

The same as ``dfstream bench heatmap``; every option passes through, e.g.

    scripts/bench_heatmap.py --json --arch tiny
    scripts/bench_heatmap.py --json --arch ViT-B-16 --threads 1
"""

from __future__ import annotations

import sys

from stream.cli import app

if __name__ == "__main__":
    app(["bench", "heatmap", *sys.argv[1:]], prog_name="bench_heatmap.py")
