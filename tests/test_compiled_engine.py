"""The compiled crop-scorer engine: batch buckets and padding, SDPA attention, the engine cache
and its keys, the accuracy gate, FP8's availability, ``auto``'s choice, and ``dfstream engine``.

CPU cases compile the tiny tower (about a minute on two shared cores) or run the same bucketing
eagerly; the GPU cases (CUDA parity, CUDA graphs, FP8 and its gate) are skipped without CUDA.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from engines.backends import choose_gpu_engine, create_scorer, default_precision
from engines.backends.base import BackendUnavailable
from engines.backends.build import (
    MAX_P99_ABS_DIFF,
    EngineRefused,
    accuracy_gate,
    gate_crops,
    gated_engine,
    p_fake,
    reference_precision,
)
from engines.backends.compiled import (
    CompiledScorer,
    batch_buckets,
    bucket_for,
    padded_input,
)
from engines.backends.engine_cache import (
    EngineCache,
    EngineKey,
    EngineManifest,
    engine_key,
    fastest_gated,
)
from engines.backends.fp8 import fp8_targets, fp8_unavailable
from engines.backends.sdpa import attention_kernels, use_sdpa_attention
from engines.backends.torch_backend import TorchScorer
from engines.checkpoints.files import tensors_sha256
from engines.clip_detector import random_detector
from stream.cli import app
from stream.config import ConfigError, load_settings
from tests.support.clip_models import linear_head, random_crops
from tests.support.model_store import use_store

runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_store(monkeypatch, tmp_path / "store", weights_dir=None)


def scaled_tiny(seed: int = 2) -> torch.nn.Module:
    """The tiny tower with a head that makes logits of order one."""
    model = random_detector("tiny")
    head = linear_head(model.spec.width, seed)
    with torch.no_grad():
        model.head.weight.copy_(head.weight)
        model.head.bias.copy_(head.bias)
    return model


# --- buckets and padding -------------------------------------------------------------------------


def test_buckets_are_powers_of_two_up_to_max_batch() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert batch_buckets(24) == [1, 2, 4, 8, 16, 24]
    assert [bucket_for(n, [1, 2, 4, 8]) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="exceed"):
        bucket_for(9, [1, 2, 4, 8])


def test_padding_appends_zero_rows_up_to_the_bucket() -> None:
    crops = random_crops(3)
    x = padded_input(crops, [1, 2, 4], torch.device("cpu"))
    assert x.shape == (4, 224, 224, 3) and x.dtype == torch.uint8
    np.testing.assert_array_equal(x[:3].numpy(), crops)
    assert int(x[3].abs().sum()) == 0
    full = padded_input(crops[:2], [1, 2, 4], torch.device("cpu"))
    assert full.shape[0] == 2
    assert full.data_ptr() != torch.from_numpy(crops).data_ptr()  # always a fresh tensor


def test_bucketed_engine_drops_the_padding_rows_and_matches_eager() -> None:
    reference = TorchScorer(scaled_tiny(), "cpu", "fp32", max_batch=4)
    engine = CompiledScorer(scaled_tiny(), "cpu", "fp32", max_batch=4, mode="default",
                            compile=False)
    assert engine.name == "torch-buckets" and engine.buckets == [1, 2, 4]
    with pytest.raises(RuntimeError, match="warmup"):
        engine.score(random_crops(1))
    engine.warmup()
    for count in (1, 3, 4, 6, 9):  # within one bucket, padded, and split over max_batch
        crops = random_crops(count, seed=count)
        out = engine.score(crops)
        assert out.shape == (count, 2)
        np.testing.assert_allclose(out, reference.score(crops), rtol=0, atol=1e-4)
    assert engine.score(random_crops(0)).shape == (0, 2)


def test_a_dynamic_batch_engine_compiles_one_graph_beside_batch_1() -> None:
    from torch._dynamo.utils import counters

    engine = CompiledScorer(scaled_tiny(), "cpu", "fp32", max_batch=4, mode="default",
                            dynamic_batch=True)
    counters.clear()
    engine.warmup()
    assert counters["stats"]["unique_graphs"] == 2  # buckets 1, 2, 4: batch 1 and the rest
    crops = random_crops(3)
    eager = TorchScorer(scaled_tiny(), "cpu", "fp32").score(crops)
    np.testing.assert_allclose(engine.score(crops), eager, rtol=0, atol=1e-4)
    assert engine.key is None and engine.dynamic_batch


def test_explicit_buckets_must_end_at_max_batch() -> None:
    engine = CompiledScorer(scaled_tiny(), "cpu", "fp32", max_batch=8, mode="default",
                            compile=False, buckets=[8, 1, 3])
    assert engine.buckets == [1, 3, 8]
    with pytest.raises(ValueError, match="end at max_batch"):
        CompiledScorer(scaled_tiny(), "cpu", "fp32", max_batch=8, compile=False, buckets=[1, 4])


# --- attention ------------------------------------------------------------------------------------


def test_attention_is_rewritten_to_sdpa_without_changing_outputs() -> None:
    model = scaled_tiny().eval()
    swapped = copy.deepcopy(model)
    assert use_sdpa_attention(swapped) == model.spec.layers
    crops = torch.from_numpy(random_crops(3))
    with torch.inference_mode():
        torch.testing.assert_close(swapped(crops), model(crops), rtol=0, atol=1e-5)
    kernels = attention_kernels(swapped, crops)
    assert kernels == ["aten::_scaled_dot_product_flash_attention_for_cpu"]


# --- engine cache ---------------------------------------------------------------------------------


def _key(**changes: object) -> EngineKey:
    key = EngineKey(weights="w" * 64, arch="tiny", precision="bf16", device="NVIDIA H200",
                    torch=torch.__version__, mode="reduce-overhead", max_batch=32)
    return replace(key, **changes)  # type: ignore[arg-type]


def test_every_part_of_the_key_names_a_different_engine() -> None:
    base = _key()
    changed = [_key(weights="v" * 64), _key(arch="ViT-L-14"), _key(precision="fp8"),
               _key(device="NVIDIA H100 80GB HBM3"), _key(torch="2.11.0"),
               _key(mode="max-autotune"), _key(max_batch=64), _key(dynamic_batch=True)]
    assert len({base.id, *(k.id for k in changed)}) == len(changed) + 1
    assert base.id.startswith("tiny-bf16-reduce-overhead-b32-")
    assert base.same_machine("w" * 64, "tiny", "NVIDIA H200")
    assert not _key(torch="2.11.0").same_machine("w" * 64, "tiny", "NVIDIA H200")
    cpu = engine_key("w" * 64, "tiny", "fp32", torch.device("cpu"), "default", 2)
    assert cpu.device.startswith("cpu") and cpu.torch == torch.__version__


def test_manifests_round_trip_and_unreadable_ones_are_skipped(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    manifest = EngineManifest(key=_key(), cold_start_s=41.5, buckets=[1, 2],
                              gate={"passed": True, "p99_abs_diff": 0.001})
    path = cache.write(manifest)
    assert path == tmp_path / "compiled" / _key().id / "manifest.json"
    assert cache.read(_key()) == manifest and cache.read(_key()).passed  # type: ignore[union-attr]
    (tmp_path / "compiled" / "broken").mkdir()
    (tmp_path / "compiled" / "broken" / "manifest.json").write_text("{not json")
    assert cache.manifests() == [manifest]
    assert not cache.is_warm(_key())


def test_auto_takes_the_fastest_gated_engine_that_beats_eager(tmp_path: Path) -> None:
    passed, failed = {"passed": True}, {"passed": False, "reason": "p99 0.2 > 0.01"}
    rows = [
        EngineManifest(key=_key(), gate=passed, crops_per_s=3000, eager_crops_per_s=2000),
        EngineManifest(key=_key(precision="fp8"), gate=failed, crops_per_s=9000,
                       eager_crops_per_s=2000),
        EngineManifest(key=_key(mode="max-autotune"), gate=passed, crops_per_s=3500,
                       eager_crops_per_s=2000),
        EngineManifest(key=_key(precision="fp16", mode="default"), gate=passed,
                       crops_per_s=1900, eager_crops_per_s=2000),  # slower than eager
        EngineManifest(key=_key(device="NVIDIA A100"), gate=passed, crops_per_s=8000,
                       eager_crops_per_s=1000),
        EngineManifest(key=_key(torch="2.11.0", precision="fp16"), gate=passed,
                       crops_per_s=8000, eager_crops_per_s=1000),
    ]
    best = fastest_gated(rows, "w" * 64, "tiny", "NVIDIA H200")
    assert best is not None and best.key == _key(mode="max-autotune")
    assert fastest_gated(rows, "v" * 64, "tiny", "NVIDIA H200") is None
    cache = EngineCache(tmp_path)
    for row in rows:
        cache.write(row)
    choice = choose_gpu_engine("tiny", "w" * 64, "NVIDIA H200", None, "bf16", 32, tmp_path,
                               "reduce-overhead", False)
    assert choice == ("torch-compile", "bf16", "max-autotune", False)
    fp16 = choose_gpu_engine("tiny", "w" * 64, "NVIDIA H200", "fp16", "fp16", 32, tmp_path,
                             "reduce-overhead", False)
    assert fp16 == ("torch", "fp16", "reduce-overhead", False)  # fp16 engine: slower than eager
    other_batch = choose_gpu_engine("tiny", "w" * 64, "NVIDIA H200", None, "bf16", 64,
                                    tmp_path, "reduce-overhead", False)
    assert other_batch == ("torch", "bf16", "reduce-overhead", False)


# --- the accuracy gate ----------------------------------------------------------------------------


def _logits(p: np.ndarray) -> np.ndarray:
    """Two-class logits whose softmax p_fake is ``p``."""
    return np.stack([np.zeros_like(p), np.log(p / (1 - p))], axis=1).astype(np.float32)


def test_the_gate_passes_an_engine_that_agrees() -> None:
    p = np.linspace(0.02, 0.98, 128)
    noise = np.random.default_rng(0).normal(0, 1e-4, p.shape)
    result = accuracy_gate(_logits(p), _logits(np.clip(p + noise, 1e-3, 1 - 1e-3)))
    np.testing.assert_allclose(p_fake(_logits(p)), p, atol=1e-6)
    assert result.passed and result.reason is None
    assert result.p99_abs_diff < MAX_P99_ABS_DIFF and result.spearman > 0.999
    assert result.crops == 128


def test_the_gate_refuses_moved_scores_and_a_changed_order_naming_the_numbers() -> None:
    p = np.linspace(0.02, 0.98, 128)
    moved = p.copy()
    moved[::10] += 0.05  # 13 crops off by 0.05: p99 far above 0.01
    result = accuracy_gate(_logits(p), _logits(moved), "eager bf16")
    assert not result.passed
    assert result.reason is not None and "p99 |p_fake diff| 0.05" in result.reason
    assert "eager bf16" in result.reason
    reordered = np.full(128, 0.5) + np.random.default_rng(1).normal(0, 1e-3, 128)
    flat = np.full(128, 0.5) + np.linspace(0, 1e-3, 128)
    order = accuracy_gate(_logits(flat), _logits(reordered))
    assert not order.passed and order.p99_abs_diff < MAX_P99_ABS_DIFF
    assert order.reason is not None and "Spearman" in order.reason
    with pytest.raises(ValueError, match="matching"):
        accuracy_gate(_logits(p), _logits(p[:10]))


def test_gate_crops_are_a_fixed_set_of_real_faces() -> None:
    crops = gate_crops()
    assert crops.shape == (128, 224, 224, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops, gate_crops())
    assert crops.std() > 20  # images, not blanks
    assert reference_precision("fp8", torch.device("cuda")) == "bf16"
    assert reference_precision("fp16", torch.device("cuda")) == "fp16"
    assert reference_precision("fp32", torch.device("cpu")) == "fp32"


# --- precision and FP8 ----------------------------------------------------------------------------


def test_bf16_is_the_gpu_default_where_the_gpu_has_it() -> None:
    assert default_precision("cuda", bf16_supported=True) == "bf16"
    assert default_precision("cuda", bf16_supported=False) == "fp16"
    assert default_precision("cpu", bf16_supported=True) == "fp32"
    settings = load_settings(None)
    assert settings.detector.precision == "auto"
    assert settings.detector.compile_mode == "reduce-overhead"


def test_fp8_is_the_compiled_engines_and_says_why_it_cannot_run_here(tmp_path: Path) -> None:
    reason = fp8_unavailable(torch.device("cpu"))
    assert reason is not None and "8.9" in reason and "\n" not in reason
    with pytest.raises(BackendUnavailable, match=r"8\.9"):
        CompiledScorer(scaled_tiny(), "cpu", "fp8", max_batch=2)
    with pytest.raises(BackendUnavailable, match=r"8\.9"):  # auto: FP8 is the compiled engine's
        create_scorer(scaled_tiny(), "auto", "cpu", "fp8", max_batch=2, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="fp8"):
        load_settings(None, detector={"backend": "torch", "precision": "fp8"})
    model = scaled_tiny()
    use_sdpa_attention(model)
    targets = fp8_targets(model)
    assert len(targets) == 4 * model.spec.layers  # qkv, out, c_fc, c_proj per block
    assert all(t.startswith("visual.transformer.resblocks.") for t in targets)
    assert "head" not in targets and not any("conv1" in t for t in targets)


# --- compiled on the CPU: cache, gate, auto, the command line ------------------------------------


def test_compiled_engine_is_built_gated_cached_and_started_warm(tmp_path: Path) -> None:
    weights = tensors_sha256(random_detector("tiny").state_dict())
    built = runner.invoke(app, ["engine", "build", "--device", "cpu", "--precision", "fp32",
                                "--mode", "default", "--max-batch", "2", "--arch", "tiny",
                                "--allow-untrained", "--cache-dir", str(tmp_path), "--json"])
    assert built.exit_code == 0, built.output
    manifest = json.loads(built.stdout)
    assert manifest["passed"] and manifest["gate"]["p99_abs_diff"] <= MAX_P99_ABS_DIFF
    assert manifest["key"]["weights"] == weights and manifest["buckets"] == [1, 2]
    assert manifest["cold_start_s"] > 0 and manifest["warm_start_s"] is None
    assert manifest["crops_per_s"] > 0 and manifest["eager_crops_per_s"] > 0
    assert manifest["attention"] == ["aten::_scaled_dot_product_flash_attention_for_cpu"]
    cache = EngineCache(tmp_path)
    key = cache.manifests()[0].key
    assert cache.is_warm(key)

    engine = create_scorer(random_detector("tiny"), "torch-compile", "cpu", "fp32",
                           max_batch=2, cache_dir=tmp_path, compile_mode="default")
    assert isinstance(engine, CompiledScorer) and engine.compiled and engine.warm
    assert (cache.read(key) or manifest).warm_start_s is not None  # type: ignore[union-attr]
    crops = random_crops(3)
    eager = TorchScorer(random_detector("tiny"), "cpu", "fp32").score(crops)
    np.testing.assert_allclose(engine.score(crops), eager, rtol=0, atol=1e-4)

    listed = runner.invoke(app, ["engine", "list", "--cache-dir", str(tmp_path), "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout)[0]["id"] == key.id

    failed = cache.read(key)
    assert failed is not None
    failed.gate = {**(failed.gate or {}), "passed": False, "reason": "p99 0.2 > 0.01"}
    cache.write(failed)
    with pytest.raises(EngineRefused, match=r"p99 0\.2 > 0\.01"):
        gated_engine(random_detector("tiny"), "cpu", "fp32", 2, "default", cache, weights)


def test_engine_commands_fail_in_one_line_with_the_fix(tmp_path: Path) -> None:
    fp8 = runner.invoke(app, ["engine", "build", "--device", "cpu", "--precision", "fp8",
                              "--cache-dir", str(tmp_path)])
    assert fp8.exit_code == 2 and "8.9" in fp8.output and "--precision bf16" in fp8.output
    if not torch.cuda.is_available():
        cuda = runner.invoke(app, ["engine", "build", "--cache-dir", str(tmp_path)])
        assert cuda.exit_code == 2 and "CUDA" in cuda.output and "--device cpu" in cuda.output
    mode = runner.invoke(app, ["engine", "build", "--device", "cpu", "--mode", "fast"])
    assert mode.exit_code == 2 and "reduce-overhead" in mode.output
    empty = runner.invoke(app, ["engine", "list", "--cache-dir", str(tmp_path), "--json"])
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []
    bench = runner.invoke(app, ["engine", "bench", "--device", "cpu", "--arch", "tiny",
                                "--allow-untrained", "--cache-dir", str(tmp_path)])
    assert bench.exit_code == 2 and "dfstream engine build" in bench.output


def test_scorer_benchmark_times_the_compiled_engine_with_its_gate(tmp_path: Path) -> None:
    from engines.bench.scorer import parse_engine, run_scorer_benchmark

    assert parse_engine("torch-compile", on_gpu=True) == "torch-compile:bf16"
    assert parse_engine("tensorrt", on_gpu=True) == "tensorrt:fp16"
    assert parse_engine("torch", on_gpu=False) == "torch:fp32"
    with pytest.raises(ValueError, match="precision"):
        parse_engine("torch:fp8", on_gpu=True)
    with pytest.raises(ValueError, match="backend"):
        parse_engine("openvino", on_gpu=True)
    report = run_scorer_benchmark(
        archs=["tiny"], batches=[1, 2], device="cpu", seconds=0.0, rounds=1,
        engines=["torch:fp32", "torch-compile:fp32", "torch-compile:fp8"], cache_dir=tmp_path,
        ceiling_size=128, ceiling_seconds=0.1, dynamic_batch=True)
    rows = {(r["engine"], r.get("batch")): r for r in report["results"]}
    assert "8.9" in rows["torch-compile:fp8", None]["skipped"]
    for batch in (1, 2):
        compiled = rows["torch-compile:fp32", batch]
        assert compiled["crops_per_s"] > 0 and compiled["fraction_of_ceiling"] > 0
        assert "vs_eager" in compiled
    engine = report["engines"]["tiny"]["torch-compile:fp32"]
    assert engine["gate"]["passed"] and engine["buckets"] == [1, 2]
    assert engine["attention"] == ["aten::_scaled_dot_product_flash_attention_for_cpu"]
    assert report["compile_dynamic_batch"] is True
    assert report["targets"]["compiled_bf16_fraction_of_ceiling"] is None  # no bf16 row here


# --- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_compiled_bf16_matches_cpu_and_eager_with_fused_attention(tmp_path: Path) -> None:
    crops = random_crops(5)
    cpu = TorchScorer(scaled_tiny(), "cpu", "fp32").score(crops)
    eager = TorchScorer(scaled_tiny(), "cuda", "bf16", max_batch=4).score(crops)
    engine = CompiledScorer(scaled_tiny(), "cuda", "bf16", max_batch=4,
                            cache=EngineCache(tmp_path), weights="w" * 64)
    engine.warmup()
    out = engine.score(crops)  # 5 crops: one full bucket of 4, one padded to 1
    np.testing.assert_allclose(out, cpu, atol=5e-2)
    np.testing.assert_allclose(out, eager, atol=3e-2)
    kernels = engine.attention_kernels()
    assert kernels and all("for_cpu" not in k for k in kernels), kernels


@pytest.mark.gpu
def test_cuda_compiled_engine_passes_its_gate_on_the_gpu(tmp_path: Path) -> None:
    engine, manifest = gated_engine(scaled_tiny(), "cuda", "bf16", 8, "reduce-overhead",
                                    EngineCache(tmp_path), "w" * 64, measure=True)
    assert engine.compiled and engine.buckets == [1, 2, 4, 8]
    assert manifest.passed and manifest.crops_per_s and manifest.eager_crops_per_s
    assert manifest.cold_start_s is not None and manifest.key.device == torch.cuda.get_device_name()


@pytest.mark.gpu
def test_fp8_gate_runs_and_records_its_verdict(tmp_path: Path) -> None:
    reason = fp8_unavailable(torch.device("cuda"))
    if reason is not None:
        with pytest.raises(BackendUnavailable):
            CompiledScorer(scaled_tiny(), "cuda", "fp8", max_batch=4)
        pytest.skip(reason)
    cache = EngineCache(tmp_path)
    try:
        engine, manifest = gated_engine(scaled_tiny(), "cuda", "fp8", 8, "reduce-overhead",
                                        cache, "w" * 64)
        assert manifest.passed and engine.fp8_layers == 4 * engine.model.spec.layers
    except EngineRefused as exc:  # a verdict either way, with its numbers
        assert "p99" in str(exc) or "Spearman" in str(exc)
    recorded = cache.manifests()
    assert len(recorded) == 1 and recorded[0].gate is not None
    assert recorded[0].gate["reference"] == "eager bf16"
