"""Crop-scorer backends: torch, ONNX Runtime parity, the auto factory, TensorRT where it runs,
and load_detector's trained/untrained contract."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.backends import BackendUnavailable, create_scorer
from engines.backends.base import check_crops
from engines.backends.onnx_backend import OnnxRuntimeScorer, export_onnx
from engines.backends.tensorrt_backend import tensorrt_available
from engines.backends.torch_backend import TorchScorer
from engines.bench.scorer import run_scorer_benchmark, vit_flops_per_crop
from engines.checkpoints.bundle import bundle_from_model, model_from_state
from engines.checkpoints.catalog import install_bundle
from engines.clip_detector import LNCLIPDetector, arch_spec, random_detector
from engines.deepfake_detector import UNTRAINED_WARNING, DetectorUnavailable, load_detector
from tests.support.clip_models import hf_vision_model, install_base, linear_head, random_crops
from tests.support.model_store import use_store


def _trt_imports() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def scaled(model: LNCLIPDetector, seed: int = 2) -> LNCLIPDetector:
    """Give the head weights that make logits of order one, so 1e-4 is a real tolerance."""
    head = linear_head(model.spec.width, seed)
    with torch.no_grad():
        model.head.weight.copy_(head.weight)
        model.head.bias.copy_(head.bias)
    return model


@pytest.fixture(autouse=True)
def isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_store(monkeypatch, tmp_path / "store", weights_dir=None)


def test_crops_are_checked() -> None:
    with pytest.raises(ValueError, match="uint8"):
        check_crops(np.zeros((1, 224, 224, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, 224, 224, 3\)"):
        check_crops(np.zeros((1, 3, 224, 224), dtype=np.uint8))
    with pytest.raises(ValueError, match="numpy"):
        check_crops([[0]])  # type: ignore[arg-type]
    view = np.zeros((2, 224, 224, 3), dtype=np.uint8)[:, :, :, ::-1]
    assert check_crops(view).flags.c_contiguous


def test_torch_scorer_batches_and_handles_empty_input() -> None:
    model = scaled(random_detector("tiny"))
    crops = random_crops(7)
    whole = TorchScorer(model, max_batch=32).score(crops)
    split = TorchScorer(model, max_batch=3).score(crops)
    assert whole.shape == (7, 2) and whole.dtype == np.float32
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)
    assert TorchScorer(model).score(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 2)
    with pytest.raises(ValueError, match="uint8"):
        TorchScorer(model).score(crops.astype(np.float32))


def test_bf16_on_cpu_stays_close_to_fp32() -> None:
    crops = random_crops(3)
    fp32 = TorchScorer(scaled(random_detector("tiny")), precision="fp32").score(crops)
    bf16 = TorchScorer(scaled(random_detector("tiny")), precision="bf16").score(crops)
    np.testing.assert_allclose(bf16, fp32, atol=0.15)


def test_cuda_without_a_gpu_is_refused() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="no CUDA"):
            TorchScorer(random_detector("tiny"), device="cuda")


def _onnx_parity(arch: str, tmp_path: Path, counts: tuple[int, ...]) -> None:
    model = scaled(random_detector(arch))
    path = export_onnx(model, tmp_path / f"{arch}.onnx")
    ort = OnnxRuntimeScorer(path, max_batch=8)
    torch_scorer = TorchScorer(model, "cpu", "fp32", max_batch=8)
    for count in counts:  # the batch dimension is dynamic
        crops = random_crops(count, seed=count)
        expected = torch_scorer.score(crops)
        assert np.abs(expected).max() > 0.1  # logits large enough for the tolerance to bite
        np.testing.assert_allclose(ort.score(crops), expected, rtol=0, atol=1e-4)


def test_onnx_takes_uint8_and_matches_torch_tiny(tmp_path: Path) -> None:
    _onnx_parity("tiny", tmp_path, (1, 5))
    import onnx

    graph = onnx.load(str(tmp_path / "tiny.onnx")).graph
    crops = graph.input[0]
    assert crops.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert crops.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert "LayerNormalization" in {node.op_type for node in graph.node}


@pytest.mark.slow
def test_onnx_matches_torch_vit_b_16(tmp_path: Path) -> None:
    """Export and run ViT-B/16 (about 20 s on 2 cores)."""
    _onnx_parity("ViT-B-16", tmp_path, (1, 3))


def test_export_refuses_a_moved_model(tmp_path: Path) -> None:
    model = random_detector("tiny")
    TorchScorer(model, precision="bf16")
    with pytest.raises(ValueError, match="float32 model on the CPU"):
        export_onnx(model, tmp_path / "x.onnx")


def test_auto_on_cpu_measures_and_remembers(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    caplog.set_level(logging.INFO, logger="engines.backends")
    scorer = create_scorer(random_detector("tiny"), cache_dir=tmp_path, max_batch=4)
    assert scorer.name in ("torch", "onnxruntime") and scorer.device == "cpu"
    assert "measured faster on this CPU" in caplog.text
    assert (tmp_path / "cpu-backend-choices.json").is_file()
    caplog.clear()
    again = create_scorer(random_detector("tiny"), cache_dir=tmp_path, max_batch=4)
    assert again.name == scorer.name
    assert "measured earlier" in caplog.text


def test_explicit_backends_and_clear_refusals(tmp_path: Path) -> None:
    model = random_detector("tiny")
    assert create_scorer(model, "onnxruntime", "cpu", cache_dir=tmp_path).name == "onnxruntime"
    with pytest.raises(BackendUnavailable, match="fp32 only"):
        create_scorer(model, "onnxruntime", "cpu", "fp16", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not one of"):
        create_scorer(model, "openvino")
    assert create_scorer(model, "torch", "cpu").name == "torch"
    with pytest.raises(BackendUnavailable, match="compiled engine's precision"):
        create_scorer(model, "torch", "cpu", "fp8")


@pytest.mark.skipif(_trt_imports(), reason="TensorRT is installed here")
def test_tensorrt_missing_says_so(tmp_path: Path) -> None:
    assert not tensorrt_available()
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        create_scorer(random_detector("tiny"), "tensorrt", "cpu", cache_dir=tmp_path)


@pytest.mark.gpu
def test_tensorrt_fp16_matches_torch(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    model = scaled(random_detector("tiny"))
    crops = random_crops(5)
    reference = TorchScorer(scaled(random_detector("tiny")), "cpu", "fp32").score(crops)
    scorer = create_scorer(model, "tensorrt", "cuda", "fp16", max_batch=4, cache_dir=tmp_path)
    assert scorer.name == "tensorrt"
    np.testing.assert_allclose(scorer.score(crops), reference, atol=2e-2)
    again = create_scorer(scaled(random_detector("tiny")), "tensorrt", "cuda", "fp16",
                          max_batch=4, cache_dir=tmp_path)  # from the engine cache
    np.testing.assert_allclose(again.score(crops), reference, atol=2e-2)


@pytest.mark.gpu
def test_cuda_fp16_and_bf16_eager_match_cpu() -> None:
    crops = random_crops(5)
    reference = TorchScorer(scaled(random_detector("tiny")), "cpu", "fp32").score(crops)
    for precision in ("fp16", "bf16"):
        eager = TorchScorer(scaled(random_detector("tiny")), "cuda", precision, max_batch=4)
        np.testing.assert_allclose(eager.score(crops), reference, atol=5e-2)


@dataclass
class Config:
    arch: str = "tiny"
    bundle: str | None = None
    backend: str = "torch"
    device: str = "cpu"
    precision: str = "auto"
    max_batch: int = 8
    compile_mode: str = "default"
    compile_dynamic_batch: bool = False
    allow_untrained: bool = False


def test_no_trained_detector_is_refused_unless_allowed() -> None:
    with pytest.raises(DetectorUnavailable, match="allow_untrained"):
        load_detector(Config())
    scorer, info = load_detector(Config(allow_untrained=True))
    assert info.trained is False and info.warning == UNTRAINED_WARNING
    assert "UNTRAINED" in info.as_dict()["warning"]
    assert scorer.score(random_crops(2)).shape == (2, 2)


def test_the_service_settings_section_is_what_load_detector_takes() -> None:
    from stream.config import load_settings

    settings = load_settings(None, detector={"arch": "tiny", "backend": "torch",
                                             "device": "cpu", "allow_untrained": True})
    scorer, info = load_detector(settings.detector)
    assert (info.arch, info.trained, info.precision) == ("tiny", False, "fp32")
    assert scorer.max_batch == settings.detector.max_batch


def test_the_installed_bundle_is_found_and_described() -> None:
    base = install_base(hf_vision_model("tiny"))
    model = scaled(model_from_state("tiny", {**base.tensors,
                                                "head.weight": torch.zeros(2, 64),
                                                "head.bias": torch.zeros(2)}))
    calibration = {"method": "platt", "params": [1.5, -0.2]}
    install_bundle(bundle_from_model(model, base.ref, calibration=calibration), "tiny-a")
    scorer, info = load_detector(Config())
    assert info.trained and info.warning is None
    assert (info.bundle, info.base, info.calibration) == ("tiny-a", base.name, calibration)
    assert (info.backend, info.device, info.precision) == ("torch", "cpu", "fp32")
    crops = random_crops(3)
    with torch.no_grad():
        expected = model(torch.from_numpy(crops)).numpy()
    np.testing.assert_allclose(scorer.score(crops), expected, rtol=1e-6, atol=1e-6)
    _, named = load_detector(Config(bundle="tiny-a", backend="onnxruntime"))
    assert named.backend == "onnxruntime" and named.bundle == "tiny-a"
    with pytest.raises(DetectorUnavailable, match="no detector bundle named 'nope'"):
        load_detector(Config(bundle="nope"))
    with pytest.raises(DetectorUnavailable, match=r"set detector\.arch: tiny"):
        load_detector(Config(arch="ViT-B-16", bundle="tiny-a"))


def test_flops_formula_agrees_with_torchs_counter() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = LNCLIPDetector("tiny").eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.from_numpy(random_crops(1)))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    counted = counter.get_total_flops()
    spec = arch_spec("tiny")
    # On the CPU the counter sees the convolution and the linear layers but not the fused
    # attention kernel: scores and weighted sum, 2 x 2 T^2 w per layer.
    tokens = (spec.image_size // spec.patch_size) ** 2 + 1
    attention = spec.layers * 4 * tokens**2 * spec.width
    assert vit_flops_per_crop(spec) == pytest.approx(counted + attention, rel=1e-3)
    assert 160e9 < vit_flops_per_crop(arch_spec("ViT-L-14")) < 165e9


def test_benchmark_reports_ratios_against_its_own_baseline(tmp_path: Path) -> None:
    report = run_scorer_benchmark(archs=["tiny"], batches=[1, 2], device="cpu", seconds=0.0,
                                  cache_dir=tmp_path, ceiling_size=128, ceiling_seconds=0.1)
    rows = [r for r in report["results"] if "crops_per_s" in r]
    assert {(r["engine"], r["batch"]) for r in rows} == {
        ("torch:fp32", 1), ("torch:fp32", 2), ("onnxruntime:fp32", 1), ("onnxruntime:fp32", 2)}
    assert report["matmul_ceiling_tflops"] > 0 and report["matmul_ceiling_dtype"] == "float32"
    assert "fp8_matmul_ceiling_skipped" in report  # no FP8 on a CPU, and it says why
    for row in rows:
        assert row["crops_per_s"] > 0 and row["achieved_tflops"] > 0
        assert row["fraction_of_ceiling"] > 0 and "vs_batch_1" in row and "vs_eager" in row
    assert next(r for r in rows if r["engine"] == "torch:fp32" and r["batch"] == 2)[
        "vs_eager"] == 1
    assert report["targets"]["arch"] == "tiny"
