#!/usr/bin/env python3
"""Benchmark of the ingest's CPU against FFmpeg's decode; the same as ``dfstream bench ingest``
(see --help).

    .venv/bin/python scripts/bench_ingest.py --json
"""

from __future__ import annotations

import sys

from stream.cli import app

if __name__ == "__main__":
    sys.exit(app(["bench", "ingest", *sys.argv[1:]]))
