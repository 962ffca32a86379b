"""``dfstream models ...`` and ``dfstream bench scorer`` through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from engines import artifacts, hub
from engines.checkpoints.keymap import hf_tower_to_open_clip
from stream.cli import app
from tests.support.clip_models import hf_vision_model, linear_head, tune_layernorms, write_gend_file

runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DFSTREAM_HOME", str(tmp_path / "store"))
    monkeypatch.delenv("DFSTREAM_CONFIG", raising=False)
    return tmp_path / "store"


def test_info_of_vit_l_14_as_json_in_a_fresh_process() -> None:
    """The issue's check, as a user runs it (a new interpreter; no weights, little memory)."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dfstream")), "models", "info", "--arch",
         "ViT-L-14", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["arch"] == "ViT-L-14"
    assert info["trainable"] == 104_450
    assert info["total"] == 303_181_826
    assert info["embed_dim"] == 1024


def test_info_of_an_unknown_arch_is_a_usage_error() -> None:
    result = runner.invoke(app, ["models", "info", "--arch", "ViT-H-14", "--json"])
    assert result.exit_code == 2
    assert "unknown architecture" in result.output


def test_list_covers_every_registered_artifact_and_hub_model() -> None:
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert {row["name"] for row in listed["artifacts"]} == set(artifacts.ARTIFACTS)
    assert {row["name"] for row in listed["pullable"]} == set(hub.HUB_MODELS)
    assert listed["bases"] == [] and listed["bundles"] == []


def test_pull_offline_says_so_and_gives_the_manual_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    result = runner.invoke(app, ["models", "pull", "gend-clip-l-14"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "offline" in text
    assert "Manual steps" in text
    assert "dfstream models import base FILE --name clip-vit-l-14-openai" in text
    assert "dfstream models import gend FILE --name gend-clip-l-14" in text


def test_pull_of_an_unknown_name_lists_the_known_ones() -> None:
    result = runner.invoke(app, ["models", "pull", "nope"])
    assert result.exit_code == 2
    assert "gend-clip-l-14" in result.output


def test_import_list_verify_and_a_corrupt_bundle(tmp_path: Path) -> None:
    hf = hf_vision_model("tiny")
    open_clip_file = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({**hf_tower_to_open_clip(hf.state_dict()),
                "visual.proj": torch.zeros(64, 32)}, open_clip_file)
    result = runner.invoke(app, ["models", "import", "base", str(open_clip_file),
                                 "--name", "clip-tiny-test"])
    assert result.exit_code == 0, result.output

    gend = write_gend_file(tune_layernorms(hf_vision_model("tiny")), linear_head(64),
                           tmp_path / "model.safetensors")
    result = runner.invoke(app, ["models", "import", "gend", str(gend), "--name", "tiny-gend",
                                 "--base", "clip-tiny-test"])
    assert result.exit_code == 0, result.output
    assert "LayerNorms + head over clip-tiny-test" in " ".join(result.output.split())
    again = runner.invoke(app, ["models", "import", "gend", str(gend), "--name", "tiny-gend",
                                "--base", "clip-tiny-test"])
    assert again.exit_code == 2 and "exists" in again.output

    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert [b["name"] for b in listed["bases"]] == ["clip-tiny-test"]
    (bundle,) = listed["bundles"]
    assert (bundle["name"], bundle["arch"], bundle["base"]) == ("tiny-gend", "tiny",
                                                                "clip-tiny-test")

    verified = runner.invoke(app, ["models", "verify", "--json"])
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert report["ok"] and {c["name"] for c in report["checks"]} >= {"clip-tiny-test",
                                                                      "tiny-gend"}

    path = Path(bundle["path"])
    data = bytearray(path.read_bytes())
    data[-4] ^= 0xFF
    path.write_bytes(bytes(data))
    broken = runner.invoke(app, ["models", "verify", "--json"])
    assert broken.exit_code == 1
    failed = [c for c in json.loads(broken.stdout)["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["tiny-gend"]


def test_import_of_a_mismatching_detector_is_refused(tmp_path: Path) -> None:
    hf = hf_vision_model("tiny", seed=0)
    base_file = tmp_path / "base.safetensors"
    from safetensors.torch import save_file

    save_file({f"vision_model.{k}": v.contiguous() for k, v in hf.state_dict().items()},
              str(base_file))
    assert runner.invoke(app, ["models", "import", "base", str(base_file), "--name",
                               "clip-tiny-test"]).exit_code == 0
    other = write_gend_file(hf_vision_model("tiny", seed=5), linear_head(64),
                            tmp_path / "other.safetensors")
    result = runner.invoke(app, ["models", "import", "gend", str(other), "--base",
                                 "clip-tiny-test"])
    assert result.exit_code == 2
    assert "--full-model" in " ".join(result.output.split())


def test_bench_scorer_prints_json_with_ratios() -> None:
    result = runner.invoke(app, ["bench", "scorer", "--archs", "tiny", "--batches", "1,2",
                                 "--seconds", "0", "--device", "cpu", "--ceiling-size", "128",
                                 "--ceiling-seconds", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["benchmark"] == "scorer" and report["device"] == "cpu"
    rows = [r for r in report["results"] if "crops_per_s" in r]
    assert len(rows) == 4 and all("vs_batch_1" in r and "vs_eager" in r for r in rows)
    bad = runner.invoke(app, ["bench", "scorer", "--archs", "ViT-X", "--json"])
    assert bad.exit_code == 2
