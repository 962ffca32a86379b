#!/usr/bin/env python3
"""Crop-scorer benchmark: crops/s per backend and batch size, with same-run ratios.

The same as ``dfstream bench scorer``; every option passes through, e.g.

    scripts/bench_scorer.py --json --archs tiny,ViT-B-16 --batches 1,8,32
    scripts/bench_scorer.py --json --archs ViT-L-14 --cache-dir ~/.cache/dfstream/engines  # GPU
"""

from __future__ import annotations

import sys

from stream.cli import app

if __name__ == "__main__":
    app(["bench", "scorer", *sys.argv[1:]], prog_name="bench_scorer.py")
