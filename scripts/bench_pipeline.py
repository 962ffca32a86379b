#!/usr/bin/env python3
"""Benchmark of the whole pipeline; the same as ``dfstream bench pipeline`` (see --help).

    .venv/bin/python scripts/bench_pipeline.py --json --plot docs/pipeline.png
"""

from __future__ import annotations

import sys

from stream.cli import app

if __name__ == "__main__":
    sys.exit(app(["bench", "pipeline", *sys.argv[1:]], prog_name="bench_pipeline.py"))
