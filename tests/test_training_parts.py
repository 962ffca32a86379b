"""The pieces of LN-tuning checked against hand computation: the losses, slerp, the trainable
set, the learning-rate schedule and paired batches."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.clip_detector import LNCLIPDetector
from engines.training.losses import Objective, alignment_loss, uniformity_loss
from engines.training.sampling import PairedBatches
from engines.training.slerp import slerp, slerp_augment
from engines.training.trainer import TrainConfig
from engines.training.tuning import check_trainable


def unit(rows: list[list[float]]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_uniformity_is_the_log_mean_gaussian_potential_over_all_pairs() -> None:
    z = unit([[1, 0], [0, 1], [-1, 0]])
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = math.log(sum(math.exp(-2 * float(((z[i] - z[j]) ** 2).sum())) for i, j in pairs)
                        / 3)
    assert float(uniformity_loss(z)) == pytest.approx(expected, rel=1e-6)
    far = unit([[1, 0], [-1, 0]]) * 100  # distance so large the mean underflows: the clamp
    assert float(uniformity_loss(far)) == pytest.approx(math.log(1e-6))


def test_alignment_is_the_mean_squared_distance_of_same_label_pairs() -> None:
    z = unit([[1, 0], [0, 1], [-1, 0], [0, -1]])
    labels = torch.tensor([0, 0, 1, 1])
    # Same-label pairs: (0, 1) and (2, 3), each squared distance 2, not halved.
    assert float(alignment_loss(z, labels)) == pytest.approx(2.0, rel=1e-6)
    assert float(alignment_loss(z[:2], torch.tensor([0, 1]))) == 0.0


def test_the_objective_weighs_its_terms_as_the_authors() -> None:
    z = unit([[1, 0], [0, 1], [-1, 0], [0, -1]])
    labels = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    total, parts = Objective()(logits, z, labels)
    expected = parts["ce"] + 0.5 * parts["uniformity"] + 0.1 * parts["alignment"]
    assert float(total) == pytest.approx(expected, rel=1e-6)
    ce = float(torch.nn.functional.cross_entropy(logits, labels))
    assert parts["ce"] == pytest.approx(ce, rel=1e-6)


def test_slerp_runs_along_the_great_circle() -> None:
    a, b = unit([[1, 0, 0]]), unit([[0, 1, 0]])
    for t in (0.0, 0.25, 0.5, 1.0):
        point = slerp(a, b, torch.tensor([t]))[0]
        angle = t * math.pi / 2
        np.testing.assert_allclose(point.numpy(), [math.cos(angle), math.sin(angle), 0],
                                   atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 1), min_size=1, max_size=12), seed=st.integers(0, 10**6))
def test_slerp_augment_keeps_batch_size_classes_and_the_sphere(labels: list[int],
                                                               seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(len(labels), 8, generator=generator), dim=-1)
    y = torch.tensor(labels)
    out = slerp_augment(z, y, torch.Generator().manual_seed(seed))
    assert out.shape == z.shape
    np.testing.assert_allclose(out.norm(dim=-1).numpy(), 1.0, atol=1e-4)
    for label in (0, 1):
        members = (y == label).nonzero().flatten()
        if len(members) == 1:
            assert torch.equal(out[members], z[members])  # no partner: left as it is
        for i in members:
            # On the arc between z_i and a same-class z_j: in the span of the class's features.
            basis = z[members].T
            coef = torch.linalg.lstsq(basis, out[i]).solution
            assert float((basis @ coef - out[i]).norm()) < 1e-3


def test_exactly_the_layernorms_and_the_head_train_in_vit_l_14() -> None:
    with torch.device("meta"):
        model = LNCLIPDetector("ViT-L-14")
    assert check_trainable(model) == 104_450
    assert sum(1 for _ in model.layernorm_modules()) == 50


def test_the_learning_rate_warms_up_then_follows_a_cosine_to_its_floor() -> None:
    config = TrainConfig(epochs=4, lr=3e-4, min_lr=1e-5, warmup_epochs=1)
    steps = 10
    rates = [config.lr_at(step, steps) for step in range(4 * steps + 1)]
    assert rates[0] == pytest.approx(1e-5)
    assert rates[steps] == pytest.approx(3e-4)
    assert all(a <= b for a, b in itertools.pairwise(rates[: steps + 1]))
    assert all(a >= b for a, b in itertools.pairwise(rates[steps:]))
    assert rates[-1] == pytest.approx(1e-5)


def test_paired_batches_bring_each_fake_with_its_source_real() -> None:
    # Videos 0, 1 real; 2 a fake of 0; 3 a fake of 1. Two crops per video.
    owners = np.repeat(np.arange(4), 2)
    targets = np.repeat(np.array([0, 0, 1, 1]), 2)
    batches = PairedBatches(targets, owners, [None, None, 0, 1], batch_size=4)
    assert batches.paired == 4
    rng = np.random.default_rng(0)
    for batch in itertools.islice(batches.epoch(rng), 20):
        fakes = [i for i in batch if targets[i] == 1]
        reals = sorted(owners[i] for i in batch if targets[i] == 0)
        assert len(fakes) == 2 and len(reals) == 2
        assert reals == sorted(owners[i] - 2 for i in fakes)  # each fake's own source
    with pytest.raises(ValueError, match="real and fake"):
        PairedBatches(np.zeros(4, np.int64), np.arange(4), [None] * 4, batch_size=2)


def test_bench_train_reports_steps_and_the_forward_baseline() -> None:
    import json

    from typer.testing import CliRunner

    from stream.cli import app

    result = CliRunner().invoke(app, ["bench", "train", "--batch", "4", "--seconds", "0.3",
                                      "--rounds", "1", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["steps_per_s"] > 0 and report["results"]["forward"]["crops_per_s"] > 0
    assert set(report["ratios"]) == {"train_step / forward", "train_step_augmented / forward"}
