"""Bundles and importers: round trips, the authors' layouts, refusals, integrity."""

from __future__ import annotations

import enum
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engines import store
from engines.checkpoints.base import BaseRef, import_base, load_base
from engines.checkpoints.bundle import (
    Bundle,
    bundle_from_model,
    model_from_bundle,
    model_from_state,
    read_bundle,
    save_bundle,
)
from engines.checkpoints.catalog import install_bundle, verify_bundle
from engines.checkpoints.errors import CheckpointError
from engines.checkpoints.files import tensors_sha256
from engines.checkpoints.importers import (
    BaseMismatchError,
    import_bundle_file,
    import_gend,
    import_lightning,
)
from engines.checkpoints.keymap import (
    hf_tower_to_open_clip,
    infer_arch,
    split_checkpoint,
    tuned_keys,
)
from engines.clip_detector import _CONFIG_DIR
from tests.support.clip_models import (
    hf_vision_model,
    install_base,
    linear_head,
    random_crops,
    reference_logits,
    tune_layernorms,
    write_gend_file,
)
from tests.support.model_store import use_store


@pytest.fixture(autouse=True)
def isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_store(monkeypatch, tmp_path / "store", weights_dir=None)


def logits_of(model: torch.nn.Module, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(crops)).numpy()


def tuned_detector(seed: int = 1) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Linear]:
    """(base HF tower, the same tower LN-tuned, a head)."""
    base = hf_vision_model("tiny", seed=0)
    tuned = tune_layernorms(hf_vision_model("tiny", seed=0), seed=seed)
    return base, tuned, linear_head(64)


def test_bundle_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    base_hf, tuned_hf, head = tuned_detector()
    base = install_base(base_hf)
    state = {**hf_tower_to_open_clip(tuned_hf.state_dict()),
             "head.weight": head.weight, "head.bias": head.bias}
    model = model_from_state("tiny", state)
    calibration = {"method": "temperature", "params": [1.7]}
    bundle = bundle_from_model(model, base.ref, calibration=calibration,
                               training={"lr": 3e-4}, metrics={"auroc": 0.5})
    path = install_bundle(bundle, "tiny-tuned")
    loaded = read_bundle(path)
    crops = random_crops(5)
    assert np.array_equal(logits_of(model_from_bundle(loaded), crops), logits_of(model, crops))
    assert loaded.calibration == calibration
    assert loaded.training == {"lr": 3e-4} and loaded.metrics == {"auroc": 0.5}
    assert loaded.base == base.ref and set(loaded.tensors) == set(tuned_keys("tiny"))
    np.testing.assert_allclose(logits_of(model, crops), reference_logits(tuned_hf, head, crops),
                               rtol=1e-4, atol=1e-4)


def test_vit_l_bundle_is_about_0_4_mb(tmp_path: Path) -> None:
    from engines.checkpoints.keymap import detector_keys

    shapes = detector_keys("ViT-L-14")[2]
    tensors = {k: torch.zeros(shapes[k]) for k in tuned_keys("ViT-L-14")}
    assert sum(t.numel() for t in tensors.values()) == 104_450
    path = save_bundle(Bundle("ViT-L-14", tensors, BaseRef("clip-vit-l-14-openai", "0" * 64)),
                       tmp_path / "l14.safetensors")
    assert 417_800 <= path.stat().st_size < 440_000


def test_full_bundle_needs_no_base(tmp_path: Path) -> None:
    model = model_from_state("tiny", {
        **hf_tower_to_open_clip(hf_vision_model("tiny").state_dict()),
        "head.weight": torch.ones(2, 64), "head.bias": torch.zeros(2),
    })
    path = save_bundle(bundle_from_model(model, None), tmp_path / "full.safetensors")
    loaded = read_bundle(path)
    assert loaded.full
    crops = random_crops(2)
    assert np.array_equal(logits_of(model_from_bundle(loaded), crops), logits_of(model, crops))


def test_corrupt_bundle_is_refused(tmp_path: Path) -> None:
    base = install_base(hf_vision_model("tiny"))
    model = model_from_state("tiny", {**base.tensors, "head.weight": torch.ones(2, 64),
                                         "head.bias": torch.zeros(2)})
    path = save_bundle(bundle_from_model(model, base.ref), tmp_path / "b.safetensors")
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_bundle(path)


def test_bundle_refuses_a_different_base_under_the_same_name() -> None:
    base = install_base(hf_vision_model("tiny", seed=0))
    model = model_from_state("tiny", {**base.tensors, "head.weight": torch.ones(2, 64),
                                         "head.bias": torch.zeros(2)})
    bundle = bundle_from_model(model, base.ref)
    install_base(hf_vision_model("tiny", seed=7))  # same name, other weights
    with pytest.raises(CheckpointError, match="different weights under the same name"):
        model_from_bundle(bundle)


def test_bundle_without_its_base_says_how_to_get_it() -> None:
    model = model_from_state("tiny", {
        **hf_tower_to_open_clip(hf_vision_model("tiny").state_dict()),
        "head.weight": torch.ones(2, 64), "head.bias": torch.zeros(2),
    })
    bundle = bundle_from_model(model, BaseRef("clip-vit-b-16-openai", "1" * 64))
    with pytest.raises(CheckpointError, match="models pull clip-vit-b-16-openai"):
        model_from_bundle(bundle)


def test_calibration_is_validated() -> None:
    model = model_from_state("tiny", {
        **hf_tower_to_open_clip(hf_vision_model("tiny").state_dict()),
        "head.weight": torch.ones(2, 64), "head.bias": torch.zeros(2),
    })
    for bad in ({"method": "isotonic", "params": []}, {"method": "platt", "params": [1.0]},
                {"method": "temperature", "params": [float("nan")]},
                {"method": "temperature", "params": [0.0]}):
        with pytest.raises(CheckpointError, match="calibration"):
            bundle_from_model(model, None, calibration=bad)


def test_gend_import_keeps_only_the_delta_and_matches_the_reference(tmp_path: Path) -> None:
    base_hf, tuned_hf, head = tuned_detector()
    install_base(base_hf)
    path = write_gend_file(tuned_hf, head, tmp_path / "model.safetensors")
    bundle = import_gend(path, base="clip-tiny-test",
                         config={"backbone": "openai/clip-vit-large-patch14", "head": "LinearNorm"})
    assert not bundle.full and set(bundle.tensors) == set(tuned_keys("tiny"))
    assert bundle.source["tuned_layernorms"] == "6/6"
    crops = random_crops(4, seed=3)
    np.testing.assert_allclose(logits_of(model_from_bundle(bundle), crops),
                               reference_logits(tuned_hf, head, crops), rtol=1e-4, atol=1e-4)


def test_gend_head_on_unnormalised_features_is_refused(tmp_path: Path) -> None:
    _, tuned_hf, head = tuned_detector()
    path = write_gend_file(tuned_hf, head, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="LinearNorm"):
        import_gend(path, config={"head": "linear"})


def test_import_refuses_frozen_weights_that_differ_from_the_base(tmp_path: Path) -> None:
    base_hf, tuned_hf, head = tuned_detector()
    install_base(base_hf)
    with torch.no_grad():
        dict(tuned_hf.named_modules())["encoder.layers.1.mlp.fc1"].weight.add_(1e-3)
    path = write_gend_file(tuned_hf, head, tmp_path / "model.safetensors")
    with pytest.raises(BaseMismatchError, match=r"resblocks\.1\.mlp\.c_fc\.weight.*--full-model"):
        import_gend(path, base="clip-tiny-test")
    full = import_gend(path, base="clip-tiny-test", full_model=True)
    assert full.full and full.source["frozen_equals_base"] is False
    crops = random_crops(2)
    np.testing.assert_allclose(logits_of(model_from_bundle(full), crops),
                               reference_logits(tuned_hf, head, crops), rtol=1e-4, atol=1e-4)


class _FakeAuthorsHead(enum.StrEnum):
    LinearNorm = "LinearNorm"
    Linear = "linear"


def _save_with_foreign_classes(obj: object, path: Path) -> None:
    """Pickle ``obj`` with a config enum from a module (``src.config``) that will not exist at
    load time, as the authors' checkpoints carry their own config classes."""
    module = types.ModuleType("src.config")
    module.Head = _FakeAuthorsHead  # type: ignore[attr-defined]
    original = _FakeAuthorsHead.__module__, _FakeAuthorsHead.__qualname__
    _FakeAuthorsHead.__module__, _FakeAuthorsHead.__qualname__ = "src.config", "Head"
    package = types.ModuleType("src")
    package.config = module  # type: ignore[attr-defined]
    sys.modules.update({"src": package, "src.config": module})
    try:
        torch.save(obj, path)
    finally:
        del sys.modules["src"], sys.modules["src.config"]
        _FakeAuthorsHead.__module__, _FakeAuthorsHead.__qualname__ = original


def _lightning_state(tuned_hf: torch.nn.Module, head: torch.nn.Linear, base_hf: torch.nn.Module,
                     peft: bool) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    base_state = base_hf.state_dict()
    for key, value in tuned_hf.state_dict().items():
        is_ln = any(n in key for n in ("layrnorm", "layernorm", "layer_norm"))
        if peft and is_ln:
            module, param = key.rsplit(".", 1)
            prefix = f"feature_extractor.base_model.model.vision_model.{module}"
            state[f"{prefix}.base_layer.{param}"] = base_state[key].clone()
            state[f"{prefix}.ln_tuning_layers.default.{param}"] = value.clone()
        elif peft:
            state[f"feature_extractor.base_model.model.vision_model.{key}"] = value.clone()
        else:
            state[f"feature_extractor.vision_model.{key}"] = value.clone()
    state["model.linear.weight"] = head.weight.detach().clone()
    state["model.linear.bias"] = head.bias.detach().clone()
    return state


@pytest.mark.parametrize("peft", [True, False], ids=["peft-ln-tuning", "unfrozen-layers"])
def test_lightning_checkpoint_with_the_authors_prefixes(tmp_path: Path, peft: bool) -> None:
    base_hf, tuned_hf, head = tuned_detector()
    install_base(base_hf)
    checkpoint = {
        "epoch": 9,
        "global_step": 1234,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": _lightning_state(tuned_hf, head, base_hf, peft),
        "hyper_parameters": {"backbone": "openai/clip-vit-large-patch14",
                             "head": _FakeAuthorsHead.LinearNorm, "run_name": "ln-clip"},
    }
    path = tmp_path / "model.ckpt"
    _save_with_foreign_classes(checkpoint, path)
    bundle = import_lightning(path, base="clip-tiny-test")
    assert bundle.source["layout"] == ("hf+peft-ln-tuning" if peft else "hf")
    assert bundle.source["head"] == "LinearNorm" and bundle.source["epoch"] == 9
    crops = random_crops(3, seed=4)
    np.testing.assert_allclose(logits_of(model_from_bundle(bundle), crops),
                               reference_logits(tuned_hf, head, crops), rtol=1e-4, atol=1e-4)


def test_lightning_head_on_unnormalised_features_is_refused(tmp_path: Path) -> None:
    base_hf, tuned_hf, head = tuned_detector()
    path = tmp_path / "model.ckpt"
    _save_with_foreign_classes({"state_dict": _lightning_state(tuned_hf, head, base_hf, False),
                                "hyper_parameters": {"head": _FakeAuthorsHead.Linear}}, path)
    with pytest.raises(CheckpointError, match="unnormalised"):
        import_lightning(path, base="clip-tiny-test")


class _Exploit:
    marker: Path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_reading_a_checkpoint_runs_none_of_its_code(tmp_path: Path) -> None:
    base_hf, tuned_hf, head = tuned_detector()
    install_base(base_hf)
    exploit = _Exploit()
    exploit.marker = tmp_path / "pwned"
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": _lightning_state(tuned_hf, head, base_hf, False),
                "callbacks": {"evil": exploit}}, path)
    bundle = import_lightning(path, base="clip-tiny-test")
    assert not exploit.marker.exists()
    assert not bundle.full


def test_openai_base_in_open_clip_layout_equals_the_hf_one(tmp_path: Path) -> None:
    hf = hf_vision_model("tiny")
    via_hf = install_base(hf, name="from-hf")
    tower = hf_tower_to_open_clip(hf.state_dict())
    open_clip_state = {
        **{k: v.half() for k, v in tower.items()},  # OpenAI's files are fp16
        "visual.proj": torch.randn(64, 32).half(),
        "positional_embedding": torch.randn(77, 32),  # the text tower is ignored
        "token_embedding.weight": torch.randn(100, 32),
        "logit_scale": torch.tensor(4.6),
    }
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(open_clip_state, path)
    import_base(path, name="from-open-clip", arch="tiny")
    halves = {k: v.half().float() for k, v in tower.items()}
    assert load_base("from-open-clip").sha256 == tensors_sha256(halves)
    assert tensors_sha256(tower) == via_hf.sha256
    with pytest.raises(CheckpointError, match="holds a tiny tower, not ViT-B-16"):
        import_base(path, name="x", arch="ViT-B-16")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_openai_base_as_torchscript_archive(tmp_path: Path) -> None:
    class Holder(torch.nn.Module):
        def __init__(self, visual: Any) -> None:
            super().__init__()
            self.visual = visual

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual.conv1(x)

    tower = hf_tower_to_open_clip(hf_vision_model("tiny").state_dict())
    model = model_from_state("tiny", {**tower, "head.weight": torch.zeros(2, 64),
                                         "head.bias": torch.zeros(2)})
    traced = torch.jit.trace(Holder(model.visual), torch.zeros(1, 3, 224, 224))
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    import_base(path, name="from-jit")
    assert load_base("from-jit").sha256 == tensors_sha256(tower)


def test_unknown_and_incomplete_towers_are_named() -> None:
    state = hf_vision_model("tiny").state_dict()
    with pytest.raises(CheckpointError, match="not part of a CLIP vision tower"):
        hf_tower_to_open_clip({**state, "encoder.layers.0.adapter.weight": torch.zeros(1)})
    del state["encoder.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(CheckpointError, match="q/k/v"):
        hf_tower_to_open_clip(state)
    with pytest.raises(CheckpointError, match="no CLIP vision tower"):
        split_checkpoint({"text_model.embeddings.x": torch.zeros(1)})
    tower = hf_tower_to_open_clip(hf_vision_model("tiny").state_dict())
    tower["visual.conv1.weight"] = torch.zeros(96, 3, 32, 32)
    with pytest.raises(CheckpointError, match="width 96"):
        infer_arch(tower)


def test_import_of_our_own_bundle_checks_its_base(tmp_path: Path) -> None:
    base = install_base(hf_vision_model("tiny"))
    model = model_from_state("tiny", {**base.tensors, "head.weight": torch.ones(2, 64),
                                         "head.bias": torch.zeros(2)})
    path = save_bundle(bundle_from_model(model, base.ref), tmp_path / "mine.safetensors")
    assert import_bundle_file(path).base == base.ref
    assert "base clip-tiny-test present" in verify_bundle(path)
    store.find_in_store(store.BASES_SUBDIR, "clip-tiny-test").unlink()  # type: ignore[union-attr]
    with pytest.raises(CheckpointError, match="not installed"):
        import_bundle_file(path)


def test_tiny_config_ships_with_the_package() -> None:
    assert (_CONFIG_DIR / "dfstream-tiny-quickgelu.json").is_file()


def test_tensors_digest_ignores_storage_dtype(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6, dtype=torch.float16).view(2, 3), "b": torch.ones(3)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "t.safetensors"))
    loaded = load_file(str(tmp_path / "t.safetensors"))
    as_float = {k: v.float() for k, v in tensors.items()}
    assert tensors_sha256(loaded) == tensors_sha256(as_float)
    assert tensors_sha256({**as_float, "b": torch.zeros(3)}) != tensors_sha256(as_float)
