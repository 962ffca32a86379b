"""Calibration: fitted temperature and Platt scaling repair known miscalibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.calibration import calibration_curve

from engines.calibration import (
    CalibrationError,
    Calibrator,
    expected_calibration_error,
    fit,
    fit_platt,
    fit_temperature,
    margins,
    reliability,
)


def synthetic(n: int, seed: int, scale: float, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) logits whose margin is ``scale * true_logit + shift``, and labels drawn from the
    true probability: a detector with a known miscalibration."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.0, 1.5, n)
    labels = (rng.random(n) < expit(true_logit)).astype(np.int64)
    margin = scale * true_logit + shift
    offset = rng.normal(0.0, 3.0, n)  # softmax ignores a common offset; so must calibration
    logits = np.stack([offset - margin / 2, offset + margin / 2], axis=1).astype(np.float32)
    return logits, labels


def test_identity_is_reported_uncalibrated_and_is_the_softmax() -> None:
    logits = np.array([[0.0, 2.0], [1.0, -1.0], [3.0, 3.0]], dtype=np.float32)
    identity = Calibrator.from_dict(None)
    assert identity.is_identity
    assert identity.label == "uncalibrated"
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(identity.p_fake(logits), softmax[:, 1], rtol=1e-6)
    assert identity.to_dict() == {"method": "none", "params": []}


def test_temperature_fixes_overconfidence() -> None:
    train_logits, train_labels = synthetic(20_000, seed=1, scale=3.0, shift=0.0)
    test_logits, test_labels = synthetic(20_000, seed=2, scale=3.0, shift=0.0)
    before = expected_calibration_error(Calibrator().p_fake(test_logits), test_labels)
    calibrator = fit_temperature(train_logits, train_labels)
    after = expected_calibration_error(calibrator.p_fake(test_logits), test_labels)
    assert before > 0.08
    assert after < 0.03
    assert calibrator.params[0] == pytest.approx(3.0, rel=0.08)
    # Temperature never changes the ranking.
    order = np.argsort(margins(test_logits))
    assert np.all(np.diff(calibrator.p_fake(test_logits)[order]) >= 0)


def test_platt_fixes_overconfidence_and_bias() -> None:
    train_logits, train_labels = synthetic(20_000, seed=3, scale=2.5, shift=1.5)
    test_logits, test_labels = synthetic(20_000, seed=4, scale=2.5, shift=1.5)
    before = expected_calibration_error(Calibrator().p_fake(test_logits), test_labels)
    temperature = fit_temperature(train_logits, train_labels)
    platt = fit_platt(train_logits, train_labels)
    after = expected_calibration_error(platt.p_fake(test_logits), test_labels)
    assert before > 0.1
    assert after < 0.03
    # A shifted detector needs Platt's bias: temperature alone cannot remove it.
    assert after < expected_calibration_error(temperature.p_fake(test_logits), test_labels)
    a, b = platt.params
    assert a == pytest.approx(1 / 2.5, rel=0.08)
    assert b == pytest.approx(-1.5 / 2.5, abs=0.06)


def test_parameters_round_trip_as_the_bundle_stores_them() -> None:
    logits, labels = synthetic(4_000, seed=5, scale=2.0, shift=0.5)
    for method in ("none", "temperature", "platt"):
        calibrator = fit(logits, labels, method)
        stored = json.loads(json.dumps(calibrator.to_dict()))
        assert stored["method"] == method
        again = Calibrator.from_dict(stored)
        assert again == calibrator
        np.testing.assert_array_equal(again.p_fake(logits), calibrator.p_fake(logits))
    assert fit(logits, labels, "temperature").label.startswith("temperature (T=")
    assert fit(logits, labels, "platt").label.startswith("platt (a=")


def test_margins_accept_differences_directly() -> None:
    logits, _ = synthetic(100, seed=6, scale=1.0, shift=0.0)
    calibrator = Calibrator("temperature", (2.0,))
    np.testing.assert_allclose(
        calibrator.p_fake(logits), calibrator.p_fake(logits[:, 1] - logits[:, 0]), rtol=1e-6
    )


def test_ece_by_hand_and_against_scikit_learn() -> None:
    # Ten crops all at 0.9 of which half are fake: one bin, |0.5 - 0.9| = 0.4.
    assert expected_calibration_error(np.full(10, 0.9), np.array([1, 0] * 5)) == pytest.approx(0.4)
    # Perfect within each bin.
    p = np.array([0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75])
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(p, y) == pytest.approx(0.0)

    rng = np.random.default_rng(7)
    p = rng.random(5_000)
    y = (rng.random(5_000) < p**1.5).astype(int)
    bins = reliability(p, y)
    assert bins.counts.sum() == 5_000 and len(bins.counts) == 15
    prob_true, prob_pred = calibration_curve(y, p, n_bins=15)
    filled = bins.counts > 0
    np.testing.assert_allclose(bins.fraction_fake[filled], prob_true)
    np.testing.assert_allclose(bins.mean_predicted[filled], prob_pred)
    expected = np.sum(bins.counts[filled] / 5_000 * np.abs(prob_true - prob_pred))
    assert bins.ece == pytest.approx(expected)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"method": "isotonic", "params": []}, "unknown calibration method"),
        ({"method": "temperature", "params": []}, "takes 1 parameter"),
        ({"method": "temperature", "params": [0.0]}, "temperature must be > 0"),
        ({"method": "platt", "params": [1.0, float("nan")]}, "must be finite"),
        ({"method": "platt", "params": "1,2"}, "list of numbers"),
        ({"method": "none", "params": [], "extra": 1}, "unknown calibration keys"),
    ],
)
def test_bad_parameters_are_refused(data: dict, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        Calibrator.from_dict(data)


def test_bad_fitting_input_is_refused() -> None:
    logits = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(CalibrationError, match="both real"):
        fit_temperature(logits, np.ones(4))
    with pytest.raises(CalibrationError, match="shape"):
        fit_platt(logits, np.ones(3))
    with pytest.raises(CalibrationError, match="0 \\(real\\) or 1"):
        fit_platt(logits, np.array([0, 1, 2, 1]))
    with pytest.raises(CalibrationError, match="shape \\(N, 2\\)"):
        Calibrator().p_fake(np.zeros((4, 3)))
    with pytest.raises(CalibrationError, match="NaN"):
        Calibrator().p_fake(np.array([0.0, np.inf]))
    with pytest.raises(CalibrationError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([1.2]), np.array([1]))
