"""What ``dfstream demo`` shows: its own subscriber (the latency a subscriber sees, the live
events) and the live table of streams under the banner that says what the detector is worth."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from stream.commands.watch import STATUS_STYLE
from stream.sources.urls import redact

if TYPE_CHECKING:
    from rich.console import RenderableType

    from engines.deepfake_detector import DetectorInfo
    from stream.commands.demo import DemoRun
    from stream.service import Service


class ScoreProbe(threading.Thread):
    """A subscriber of its own: every live score message's arrival minus its ``captured_at``,
    and the live events for the table. A thread, so the service's event loop being busy does
    not flatter or inflate what a separate subscriber would see."""

    def __init__(self, redis_url: str, prefix: str, recent_events: int = 8) -> None:
        super().__init__(name="dfstream-demo-probe", daemon=True)
        from stream.redis_contract import RedisKeys

        self.redis_url = redis_url
        self.keys = RedisKeys(prefix)
        self.latencies: list[float] = []
        self.received: Counter[str] = Counter()
        self.events: deque[dict[str, Any]] = deque(maxlen=recent_events)
        self.error: str | None = None
        self.subscribed = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=5)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.psubscribe(self.keys.scores("*"))
            pubsub.subscribe(self.keys.events)
            self.subscribed.set()
            while not self._stopping.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message is None:
                    continue
                received_at = time.time()
                try:
                    payload = json.loads(message["data"])
                except ValueError:
                    continue
                with self._lock:
                    if message["type"] == "pmessage":
                        captured_at = payload.get("captured_at")
                        if isinstance(captured_at, int | float):
                            self.latencies.append(received_at - captured_at)
                        self.received[str(payload.get("stream"))] += 1
                    else:
                        self.events.append(payload)
        except redis.RedisError as exc:
            self.error = str(exc)
        finally:
            self.subscribed.set()
            pubsub.close()
            client.close()

    def drain(self, expected: int, timeout_s: float = 3.0) -> None:
        """Wait (a little) for the messages still in flight: until ``expected`` arrived."""
        deadline = time.monotonic() + timeout_s
        while sum(self.received.values()) < expected and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    def recent(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def latency_ms(self) -> dict[str, Any]:
        import numpy as np

        with self._lock:
            values = np.array(self.latencies) * 1000.0
        if not len(values):
            return {"p50": None, "p99": None, "max": None, "samples": 0}
        p50, p99 = np.percentile(values, [50, 99])
        return {"p50": round(float(p50), 1), "p99": round(float(p99), 1),
                "max": round(float(values.max()), 1), "samples": len(values)}


def detector_banner(info: DetectorInfo, note: str | None) -> RenderableType | None:
    """The panel that says what the scores are worth: nothing (random weights) or a synthetic
    demo model's; None for a detector trained on real data."""
    from rich.panel import Panel

    if info.warning is None:
        return None
    text = f"[bold]{info.warning}[/bold]"
    if note:
        text += f"\n{note}"
    title = ("SYNTHETIC DEMO MODEL: NOT A DEEPFAKE DETECTOR" if info.trained
             else "UNTRAINED DETECTOR: SCORES MEAN NOTHING")
    return Panel(text, title=title, style="bold white on red", expand=False)


def view(
    run: DemoRun, service: Service, probe: ScoreProbe, elapsed: float,
    streams: list[dict[str, Any]] | None = None,
) -> RenderableType:
    from rich.console import Group
    from rich.table import Table

    info = service.detector_info
    title = f"dfstream demo · {elapsed:.0f} s · {run.dashboard} · Ctrl-C to stop"
    table = Table(title=title, expand=False)
    for column in ("stream", "status", "fps in", "fps analysed", "frames", "faces",
                   "p_stream", "state", "error"):
        table.add_column(column, overflow="fold")
    for s in streams if streams is not None else service.list_streams():
        status_style = STATUS_STYLE.get(s["status"], "yellow")
        p = s["p_stream"]
        state_style = "bold white on red" if s["state"] == "alert" else "green"
        table.add_row(
            s["id"], f"[{status_style}]{s['status']}[/{status_style}]", f"{s['fps_in']:.1f}",
            f"{s['fps_analysed']:.1f}", str(s["frames_analysed"]), str(s["faces"]),
            "-" if p is None else f"{p:.3f}", f"[{state_style}]{s['state']}[/{state_style}]",
            s["last_error"] or "",
        )
    latency = probe.latency_ms()
    detector = (f"{info.arch} {info.backend}/{info.device}" + _detector_tag(info)) if info else "-"
    lines = [
        f"detector: {detector}",
        "latency decoded → subscriber: " + (
            f"p50 {latency['p50']:.0f} ms, p99 {latency['p99']:.0f} ms "
            f"({latency['samples']} messages)" if latency["samples"] else "-"),
        f"redis: {redact(run.redis_url)}  (dfstream watch --redis-url {redact(run.redis_url)})",
    ]
    recent = probe.recent()
    events = Table("latest events", "stream", "score", "at", box=None, show_header=True)
    for event in reversed(recent[-6:]):
        score = event.get("top_score") or event.get("score")
        at = event.get("at") or event.get("start")
        events.add_row(str(event.get("type")), str(event.get("stream")),
                       "-" if score is None else f"{score:.3f}",
                       time.strftime("%H:%M:%S", time.localtime(at)) if at else "-")
    return Group(table, *lines, events if recent else "latest events: none yet")


def status_line(elapsed: float, streams: list[dict[str, Any]]) -> str:
    """The live table's figures as one plain line, for a log that a live view cannot redraw."""
    parts = []
    for s in streams:
        p = s["p_stream"]
        parts.append(
            f"{s['id']} {s['status']} {s['fps_in']:.1f}/{s['fps_analysed']:.1f} fps, "
            f"{s['frames_analysed']} frames, p_stream {'-' if p is None else f'{p:.3f}'}, "
            f"{s['state']}" + (f" ({s['last_error']})" if s["last_error"] else ""))
    return f"demo {elapsed:.0f} s: " + ("; ".join(parts) or "no streams")


def _detector_tag(info: DetectorInfo) -> str:
    if not info.trained:
        return " [bold white on red] UNTRAINED [/]"
    return " [bold white on red] SYNTHETIC DEMO MODEL [/]" if info.synthetic else ""
