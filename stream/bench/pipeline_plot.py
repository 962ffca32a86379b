"""The pipeline benchmark's plot: analysed fps per stream and latency against live streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stream.bench.pipeline import TARGET_P99_MS


def plot(result: dict[str, Any], path: Path) -> Path:
    """Analysed fps per stream and latency against the number of streams, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    levels = result["levels"]
    cfg = result["config"]
    streams = [lvl["streams"] for lvl in levels]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True)
    top.plot(streams, [lvl["fps_per_stream"]["mean"] for lvl in levels], "o-", label="mean")
    top.plot(streams, [lvl["fps_per_stream"]["min"] for lvl in levels], "s--",
             label="slowest stream")
    top.axhline(cfg["fps"] * cfg["sustain_fraction"], color="grey", linestyle=":",
                label=f"{cfg['sustain_fraction']:.0%} of {cfg['fps']:g} fps")
    sustained = result["max_streams_sustained"]
    if sustained:
        for axis in (top, bottom):
            axis.axvline(sustained, color="green", alpha=0.3, linewidth=6,
                         label="most streams sustained" if axis is top else None)
    top.set_ylabel("analysed fps per stream")
    top.set_ylim(0, cfg["fps"] * 1.15)
    top.legend(loc="lower left", fontsize=8)
    for key, style in (("p50", "o-"), ("p99", "s-")):
        values = [lvl["latency_ms"][key] for lvl in levels]
        bottom.plot(streams, [np.nan if v is None else v for v in values], style,
                    label=f"{key} decoded → published")
    bottom.axhline(TARGET_P99_MS, color="red", linestyle=":", label="p99 target 250 ms")
    bottom.set_yscale("log")
    bottom.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    bottom.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    bottom.yaxis.set_minor_formatter(ticker.NullFormatter())
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("live streams")
    bottom.legend(loc="upper left", fontsize=8)
    detector = result["detector"]
    fig.suptitle(
        f"dfstream pipeline, {cfg['width']}x{cfg['height']} at {cfg['fps']:g} fps: "
        f"{detector['arch']} scorer ({detector['backend']}, {detector['device']})\n"
        f"batching gain {result['batching_gain']}x (scorer stage "
        f"{result['scorer_batching_gain']}x)",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
