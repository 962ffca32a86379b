"""Calibration of the detector's logits: temperature or Platt scaling, and the ECE that judges it.

Operators tune thresholds on probabilities, so those probabilities must mean what they say: of
the crops scored 0.8, about 80% should be fake. The detector's raw softmax is usually
over-confident; one or two parameters fitted on held-out (logit, label) pairs fix most of that.

Both methods act on the margin ``d = logit_fake - logit_real`` of the (N, 2) head output, since
a two-class softmax is ``sigmoid(d)``:

- temperature: ``p = sigmoid(d / T)``, one parameter, never changes the ranking;
- Platt: ``p = sigmoid(a * d + b)``, also corrects a bias toward one class.

Parameters travel as a small dict, ``{"method": "temperature", "params": [1.84]}``, which the
detector bundle stores; the identity (nothing fitted) is ``{"method": "none", "params": []}``
and reports itself as "uncalibrated".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
from scipy import optimize, special

from engines.errors import UserError

Method = Literal["none", "temperature", "platt"]
METHODS: tuple[Method, ...] = ("none", "temperature", "platt")
ECE_BINS = 15

_PARAM_COUNT: dict[str, int] = {"none": 0, "temperature": 1, "platt": 2}
_TEMPERATURE_RANGE = (1e-3, 1e3)


class CalibrationError(UserError, ValueError):
    """Bad calibration input or parameters; the message says which and why."""


def margins(logits: np.ndarray) -> np.ndarray:
    """``logit_fake - logit_real`` as float64 from (N, 2) head outputs, or (N,) margins as is."""
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 2:
        array = array[:, 1] - array[:, 0]
    elif array.ndim != 1:
        raise CalibrationError(
            f"logits must have shape (N, 2) or (N,), got {tuple(np.shape(logits))}"
        )
    if not np.all(np.isfinite(array)):
        raise CalibrationError("logits contain NaN or infinite values")
    return array


@dataclass(frozen=True)
class Calibrator:
    """Turns logits into calibrated p_fake; the identity when nothing was fitted."""

    method: Method = "none"
    params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in _PARAM_COUNT:
            raise CalibrationError(
                f"unknown calibration method {self.method!r}; expected one of {METHODS}"
            )
        expected = _PARAM_COUNT[self.method]
        if len(self.params) != expected:
            raise CalibrationError(
                f"{self.method} calibration takes {expected} parameter(s), "
                f"got {len(self.params)}: {list(self.params)}"
            )
        if not all(math.isfinite(value) for value in self.params):
            raise CalibrationError(f"calibration parameters must be finite: {list(self.params)}")
        if self.method == "temperature" and self.params[0] <= 0:
            raise CalibrationError(f"temperature must be > 0, got {self.params[0]}")

    @property
    def is_identity(self) -> bool:
        return self.method == "none"

    @property
    def label(self) -> str:
        """Short human description, e.g. for ``dfstream models list`` and score output."""
        if self.method == "temperature":
            return f"temperature (T={self.params[0]:.3g})"
        if self.method == "platt":
            return f"platt (a={self.params[0]:.3g}, b={self.params[1]:.3g})"
        return "uncalibrated"

    def p_fake(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probability that each crop is fake, float64 of shape (N,)."""
        return special.expit(self.scaled_margins(logits))

    def scaled_margins(self, logits: np.ndarray) -> np.ndarray:
        d = margins(logits)
        if self.method == "temperature":
            return d / self.params[0]
        if self.method == "platt":
            return self.params[0] * d + self.params[1]
        return d

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": [float(v) for v in self.params]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Calibrator:
        """Parameters as the bundle stores them; ``None`` is the identity."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise CalibrationError(f"calibration must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"method", "params"}
        if unknown:
            raise CalibrationError(f"unknown calibration keys: {sorted(unknown)}")
        method = data.get("method", "none")
        params = data.get("params", [])
        if not isinstance(params, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in params
        ):
            raise CalibrationError(f"calibration params must be a list of numbers, got {params!r}")
        if method not in _PARAM_COUNT:
            raise CalibrationError(
                f"unknown calibration method {method!r}; expected one of {METHODS}"
            )
        return cls(cast(Method, method), tuple(float(v) for v in params))


def _labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise CalibrationError(f"labels must have shape ({n},) to match the logits, got {y.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise CalibrationError("labels must be 0 (real) or 1 (fake)")
    return y.astype(np.float64)


def _fit_inputs(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = margins(logits)
    y = _labels(labels, d.shape[0])
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise CalibrationError(
            "calibration needs both real (0) and fake (1) examples; "
            f"got {len(y) - positives} real and {positives} fake"
        )
    return d, y


def _nll(scores: np.ndarray, targets: np.ndarray) -> float:
    # -[t log sigmoid(s) + (1 - t) log(1 - sigmoid(s))] = softplus(s) - t * s, without overflow.
    return float(np.mean(np.logaddexp(0.0, scores) - targets * scores))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> Calibrator:
    """The temperature minimising the negative log-likelihood of the labels."""
    d, y = _fit_inputs(logits, labels)
    # NLL is convex in 1/T, hence unimodal in log T: a bounded scalar search finds the optimum.
    low, high = (math.log(v) for v in _TEMPERATURE_RANGE)
    result = optimize.minimize_scalar(
        lambda log_t: _nll(d / math.exp(log_t), y), bounds=(low, high), method="bounded",
        options={"xatol": 1e-6},
    )
    return Calibrator("temperature", (math.exp(float(result.x)),))


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Platt's sigmoid ``a * d + b``, fitted to his smoothed targets.

    The targets ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` (Platt, 1999) keep the fit finite
    when the held-out set happens to be separable.
    """
    d, y = _fit_inputs(logits, labels)
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    targets = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss_and_grad(ab: np.ndarray) -> tuple[float, np.ndarray]:
        s = ab[0] * d + ab[1]
        residual = special.expit(s) - targets
        return _nll(s, targets), np.array([np.mean(residual * d), np.mean(residual)])

    start = np.array([1.0, math.log((n_pos + 1) / (n_neg + 1))])  # identity slope, class prior
    result = optimize.minimize(loss_and_grad, start, jac=True, method="L-BFGS-B")
    if not result.success:
        raise CalibrationError(f"Platt scaling did not converge: {result.message}")
    a, b = (float(v) for v in result.x)
    return Calibrator("platt", (a, b))


def fit(logits: np.ndarray, labels: np.ndarray, method: Method) -> Calibrator:
    """Fit ``method`` on held-out (logit, label) pairs; ``"none"`` gives the identity."""
    if method == "temperature":
        return fit_temperature(logits, labels)
    if method == "platt":
        return fit_platt(logits, labels)
    if method == "none":
        _fit_inputs(logits, labels)
        return Calibrator()
    raise CalibrationError(f"unknown calibration method {method!r}; expected one of {METHODS}")


@dataclass(frozen=True)
class Reliability:
    """Equal-width bins over p_fake: the data of a reliability diagram."""

    edges: np.ndarray
    """(n_bins + 1,) from 0 to 1; bin k holds ``edges[k] < p <= edges[k + 1]``, 0 in bin 0."""
    counts: np.ndarray
    mean_predicted: np.ndarray
    """Mean p_fake per bin (NaN where empty)."""
    fraction_fake: np.ndarray
    """Fraction labelled fake per bin (NaN where empty)."""

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of ``count/N * |fraction - mean p|``."""
        filled = self.counts > 0
        gaps = np.abs(self.fraction_fake[filled] - self.mean_predicted[filled])
        return float(np.sum(self.counts[filled] * gaps) / np.sum(self.counts))


def reliability(p_fake: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> Reliability:
    """Bin probabilities as scikit-learn's ``calibration_curve`` does, keeping the counts."""
    p = np.asarray(p_fake, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise CalibrationError(f"p_fake must be a non-empty 1-D array, got shape {p.shape}")
    if not np.all((p >= 0) & (p <= 1)):
        raise CalibrationError("p_fake must lie in [0, 1]")
    if n_bins < 1:
        raise CalibrationError(f"n_bins must be >= 1, got {n_bins}")
    y = _labels(labels, p.shape[0])
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(bins, weights=p, minlength=n_bins) / counts
        fraction_fake = np.bincount(bins, weights=y, minlength=n_bins) / counts
    return Reliability(edges, counts, mean_predicted, fraction_fake)


def expected_calibration_error(
    p_fake: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE of p_fake against 0/1 labels over ``n_bins`` equal-width bins (15 by default)."""
    return reliability(p_fake, labels, n_bins).ece
