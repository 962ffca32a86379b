"""Detection metrics against cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from engines.metrics import (
    MetricsError,
    accuracy,
    bootstrap_intervals,
    equal_error_rate,
    ranking_metrics,
    tpr_at_fpr,
    video_means,
    video_report,
)

LABELS = np.array([0, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def test_auroc_and_ap_of_a_small_case() -> None:
    metrics = ranking_metrics(LABELS, SCORES)
    assert metrics.auroc == pytest.approx(0.75)  # 3 of the 4 real/fake pairs ordered right
    # Ranked: 0.8 fake, 0.4 real, 0.35 fake, 0.1 real: precision 1 at recall 1/2, 2/3 at 1.
    assert metrics.ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_eer_tpr_at_fpr_and_accuracy() -> None:
    assert equal_error_rate(LABELS, SCORES) == pytest.approx(0.5, abs=1e-6)
    separated = np.array([0.1, 0.2, 0.8, 0.9])
    assert equal_error_rate(LABELS, separated) == pytest.approx(0.0, abs=1e-6)
    assert tpr_at_fpr(LABELS, separated, 0.01) == pytest.approx(1.0)
    assert tpr_at_fpr(LABELS, SCORES, 0.0) == pytest.approx(0.5)
    assert accuracy(LABELS, SCORES, 0.5) == pytest.approx(0.75)  # 0.35 fake falls short
    assert accuracy(LABELS, SCORES, 0.3) == pytest.approx(0.75)  # 0.4 real counts as fake
    report = video_report(LABELS, SCORES, threshold=0.3)
    assert report["accuracy_at_threshold"] == pytest.approx(0.75)
    assert set(report["tpr_at_fpr"]) == {"0.001", "0.01", "0.05"}  # type: ignore[arg-type]


def test_video_means_and_bootstrap_intervals() -> None:
    frames = np.array([0.2, 0.4, 0.9, 0.7, 0.5])
    owners = np.array([0, 0, 1, 1, 2])
    np.testing.assert_allclose(video_means(frames, owners, 4)[:3], [0.3, 0.8, 0.5])
    assert np.isnan(video_means(frames, owners, 4)[3])
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    scores = labels + rng.normal(0, 0.8, 100)
    low, high = bootstrap_intervals(labels, scores, rounds=300)["auroc"]
    assert low < ranking_metrics(labels, scores).auroc < high
    assert low > 0.5 and high <= 1.0


def test_one_class_is_a_clear_error() -> None:
    with pytest.raises(MetricsError, match="real and fake"):
        ranking_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]))
