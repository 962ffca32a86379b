"""Heatmaps of alerts' evidence crops, computed off the analysis path.

The live scorer may be ONNX Runtime or TensorRT, which have no gradients, so the heatmap runs
on a CPU torch copy of the same detector (``load_model``), loaded at the first alert rather
than at start-up: a service that never alerts never pays for it. One worker thread computes
them; the pipeline only hands over the crop. An alert whose peak rises again before its
heatmap was computed gets one heatmap, of its latest peak (like the evidence, the latest wins).
A failure is logged and costs that heatmap only.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engines.clip_detector import LNCLIPDetector
from engines.heatmap import compute_heatmap

log = logging.getLogger(__name__)

PENDING_LIMIT = 64
"""Crops waiting for the worker (one per alert); beyond this the oldest are dropped, logged."""


class HeatmapWorker:
    """Computes the heatmap of each submitted crop on one thread and hands its JPEG to ``put``
    (the publisher's ``put_heatmap``)."""

    def __init__(
        self,
        load_model: Callable[[], LNCLIPDetector],
        put: Callable[[str, bytes], None],
    ) -> None:
        self._load_model = load_model
        self._put = put
        self._model: LNCLIPDetector | None = None
        self._pending: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dfstream-heatmap")
        self.computed = 0
        self.failed = 0
        self.dropped = 0

    def submit(self, event_id: str, crop: np.ndarray) -> None:
        """Queue the heatmap of an alert's peak crop; returns at once."""
        with self._lock:
            queued = event_id in self._pending
            self._pending[event_id] = crop.copy()  # the caller's array may be reused
            self._pending.move_to_end(event_id)
            while len(self._pending) > PENDING_LIMIT:
                dropped, _ = self._pending.popitem(last=False)
                self.dropped += 1
                log.error("heatmap for %s dropped: %d alerts wait for theirs", dropped,
                          PENDING_LIMIT)
        if not queued:
            self._executor.submit(self._compute, event_id)

    def close(self) -> None:
        """Finish the heatmaps queued so far (they reach the publisher before it closes)."""
        self._executor.shutdown(wait=True)

    def _compute(self, event_id: str) -> None:
        with self._lock:
            crop = self._pending.pop(event_id, None)
        if crop is None:  # dropped meanwhile
            return
        try:
            if self._model is None:
                self._model = self._load_model().eval()
            jpeg = compute_heatmap(self._model, crop).jpeg
        except Exception:
            self.failed += 1
            log.exception("heatmap for %s not computed (the alert and its evidence stand)",
                          event_id)
            return
        self.computed += 1
        self._put(event_id, jpeg)
