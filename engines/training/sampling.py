"""Batches of training crops in which a fake comes with its source real when the data says
which real video a fake was made from: the GenD paper finds such pairs essential against
shortcut learning (the model must tell the manipulation, not the identity or the backdrop)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class PairedBatches:
    """Index batches over crops: half fakes, each with a crop of its source real (or of a
    random real when its source is unknown), in an order drawn from ``rng``."""

    def __init__(
        self,
        targets: np.ndarray,
        owners: np.ndarray,
        source_of: Sequence[int | None],
        batch_size: int,
    ) -> None:
        """``targets`` and ``owners``: per crop its label and video number; ``source_of``: per
        video number the video number of its source real (None for reals or unknown)."""
        if batch_size < 2:
            raise ValueError(f"batch size must be at least 2, got {batch_size}")
        self.batch_size = batch_size
        self.fakes = np.flatnonzero(targets == 1)
        self.reals = np.flatnonzero(targets == 0)
        if len(self.fakes) == 0 or len(self.reals) == 0:
            raise ValueError(
                f"training needs real and fake crops; got {len(self.reals)} real and "
                f"{len(self.fakes)} fake"
            )
        self.crops_of: dict[int, np.ndarray] = {
            int(v): np.flatnonzero(owners == v) for v in np.unique(owners)
        }
        self.partner_video = [
            source_of[int(owners[i])] for i in range(len(owners))
        ]
        self.paired = sum(1 for i in self.fakes if self.partner_video[i] is not None)

    def __len__(self) -> int:
        return max(1, (len(self.fakes) + len(self.reals)) // self.batch_size)

    def epoch(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """One epoch of index batches."""
        half = self.batch_size // 2
        for _ in range(len(self)):
            fakes = rng.choice(self.fakes, size=half, replace=len(self.fakes) < half)
            reals = np.array([self._partner(int(i), rng) for i in fakes], np.int64)
            extra = self.batch_size - 2 * half
            if extra:
                reals = np.concatenate([reals, rng.choice(self.reals, size=extra)])
            batch = np.concatenate([fakes, reals])
            yield batch[rng.permutation(len(batch))]

    def _partner(self, fake: int, rng: np.random.Generator) -> int:
        source = self.partner_video[fake]
        pool = self.crops_of.get(source) if source is not None else None
        if pool is None or len(pool) == 0:
            pool = self.reals
        return int(rng.choice(pool))
