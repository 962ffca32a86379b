"""Commands of the ingest: benchmarks of decode and conversion cost."""

from __future__ import annotations
