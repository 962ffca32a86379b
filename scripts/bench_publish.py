#!/usr/bin/env python3
"""Benchmark of the Redis publisher; the same as ``dfstream bench publish`` (see --help).

    .venv/bin/python scripts/bench_publish.py --json
"""

from __future__ import annotations

import sys

from stream.cli import app

if __name__ == "__main__":
    sys.exit(app(["bench", "publish", *sys.argv[1:]]))
