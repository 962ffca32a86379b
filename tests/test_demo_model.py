"""The synthetic demo model's thresholds: Youden's J on the val split's video means, checked on
hand-computed cases (the model itself is built and shown end to end in test_demo.py)."""

from __future__ import annotations

import numpy as np
import pytest

from stream.demo_model import EXIT_BELOW_ENTER, DemoRecipe, youden_thresholds


def test_enter_lies_between_the_classes_when_they_separate() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.7])
    chosen = youden_thresholds(labels, scores)
    # J = 1 at a cut of 0.5; halfway down to the highest real (0.3).
    assert chosen["enter"] == pytest.approx(0.4)
    assert chosen["exit"] == pytest.approx(0.4 - EXIT_BELOW_ENTER)


def test_overlapping_classes_take_the_cut_with_the_best_j() -> None:
    labels = np.array([0, 0, 1, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 0.9])
    # cut 0.6: TPR 3/4, FPR 0 (J 0.75); cut 0.3: TPR 1, FPR 1/3 (J 0.67): halfway to 0.4.
    assert youden_thresholds(labels, scores)["enter"] == pytest.approx(0.5)


def test_a_recipe_change_is_a_new_cache_key() -> None:
    assert DemoRecipe().key == DemoRecipe().key
    assert DemoRecipe(epochs=16).key != DemoRecipe().key
