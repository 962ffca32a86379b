"""The LN-CLIP module: architecture facts, what trains, input handling, parity with HF CLIP."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

from engines.checkpoints.bundle import model_from_state
from engines.checkpoints.keymap import hf_tower_to_open_clip, split_checkpoint
from engines.clip_detector import (
    ARCHS,
    FAKE_CLASS,
    LNCLIPDetector,
    arch_spec,
    count_parameters,
    random_detector,
)
from tests.support.clip_models import clip_pixels, hf_vision_model, random_crops


def test_vit_l_counts_match_the_method() -> None:
    counts = count_parameters("ViT-L-14")
    assert counts.trainable == 104_450 == 102_400 + 2_050
    assert counts.layernorms == 50
    assert counts.embed_dim == 1024
    # 303,966,208 in the papers includes CLIP's 1024x768 projection, which the detector drops.
    assert counts.total == 303_966_208 - 1024 * 768 + 2_050


def test_counts_of_the_smaller_archs() -> None:
    vit_b = count_parameters("ViT-B-16")
    assert vit_b.trainable == 26 * 2 * 768 + 768 * 2 + 2
    tiny = count_parameters("tiny")
    assert (tiny.width, tiny.layers, tiny.patch_size, tiny.image_size) == (64, 2, 32, 224)
    assert tiny.trainable == arch_spec("tiny").trainable


def test_archs_come_from_open_clips_registry_with_quickgelu() -> None:
    for arch, name in ARCHS.items():
        arch_spec(arch)
        assert name in open_clip.list_models()
        assert open_clip.get_model_config(name)["quick_gelu"] is True


def test_unknown_arch_is_named() -> None:
    with pytest.raises(ValueError, match="ViT-L-14"):
        arch_spec("ViT-H-14")


def test_tower_is_openai_clip_without_projection() -> None:
    model = random_detector("tiny")
    assert model.visual.proj is None
    activations = [m for m in model.modules() if isinstance(m, QuickGELU)]
    assert len(activations) == model.spec.layers
    assert FAKE_CLASS == 1


def test_exactly_layernorms_and_head_train() -> None:
    model = random_detector("tiny")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.trainable_names())
    assert all("ln_" in name or name.startswith("head.") for name in trainable)
    logits = model(torch.from_numpy(random_crops(2)))
    logits.sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable


def test_takes_uint8_nhwc_and_normalises_inside() -> None:
    model = random_detector("tiny")
    crops = random_crops(3)
    x = model.preprocess(torch.from_numpy(crops))
    assert x.shape == (3, 3, 224, 224)
    torch.testing.assert_close(x, clip_pixels(crops), rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        model(torch.from_numpy(crops).float())


def test_features_are_unit_length_and_logits_come_from_them() -> None:
    model = random_detector("tiny").eval()
    with torch.no_grad():
        logits, features = model.logits_and_features(torch.from_numpy(random_crops(4)))
    assert logits.shape == (4, 2) and features.shape == (4, 64)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(logits, model.head(features))


def test_random_detector_is_reproducible() -> None:
    a, b = random_detector("tiny", seed=3), random_detector("tiny", seed=3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert not torch.equal(a.head.weight, random_detector("tiny", seed=4).head.weight)


def _pooled_relative_error(arch: str, batch: int) -> float:
    hf = hf_vision_model(arch, seed=0)
    tower = hf_tower_to_open_clip(hf.state_dict())
    width = hf.config.hidden_size
    model = model_from_state(
        arch, {**tower, "head.weight": torch.zeros(2, width), "head.bias": torch.zeros(2)}
    )
    pixels = clip_pixels(random_crops(batch, seed=5))
    with torch.no_grad():
        expected = hf(pixel_values=pixels).pooler_output
        actual = model.visual(pixels)
    return float((actual - expected).norm() / expected.norm())


def test_hf_parity_tiny() -> None:
    assert _pooled_relative_error("tiny", batch=3) <= 1e-4


def test_hf_names_with_and_without_the_vision_model_prefix() -> None:
    hf = hf_vision_model("tiny")
    bare = hf.state_dict()
    prefixed = {f"vision_model.{k}": v for k, v in bare.items()}
    a = split_checkpoint(bare).tower
    b = split_checkpoint(prefixed).tower
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_hf_parity_vit_l_14() -> None:
    """The real ViT-L/14 shape (about 20 s and 2.5 GB on 2 cores)."""
    assert _pooled_relative_error("ViT-L-14", batch=1) <= 1e-4


def test_model_accepts_a_batch_of_one_and_many() -> None:
    model = LNCLIPDetector("tiny").eval()
    with torch.no_grad():
        single = model(torch.from_numpy(random_crops(1, seed=9)))
        many = model(torch.from_numpy(np.concatenate([random_crops(1, seed=9)] * 3)))
    torch.testing.assert_close(many, single.expand(3, 2), rtol=1e-5, atol=1e-6)
