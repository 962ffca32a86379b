#!/usr/bin/env python
"""Face detector benchmark: frames/s at 640x360 and 1280x720, batch 1 vs 8, torch vs ONNX Runtime
on the CPU, and torch fp32/fp16 at batch 1, 8 and 32 on a CUDA GPU when one is present.

The same as ``dfstream bench faces``; every option passes through, e.g.
``python scripts/bench_faces.py --json --seconds 5``. Ratios compare each case with torch fp32
batch 1 of the same size and device, measured in the same run (cases are interleaved over
``--rounds`` so that machine noise falls on all of them alike).
"""

from __future__ import annotations

import sys

from stream.cli import app

if __name__ == "__main__":
    app(["bench", "faces", *sys.argv[1:]], prog_name="bench_faces.py")
