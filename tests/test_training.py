"""Training, calibration and evaluation end to end on SYNTHETIC data: `data synth` -> `data
prepare` -> `train` (tiny, CPU) -> `calibrate` -> `eval`, and the bundle through the service's
own loader and analysis path.

The tower is a random-init tiny CLIP (no CLIP weights ship here), so what it learns is the
synthetic generator's seams and colour mismatch; the assertions are about the method's
mechanics, held-out ranking well above chance, and train/serve parity, not about deepfakes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from engines.checkpoints.base import load_base
from engines.checkpoints.bundle import model_from_bundle, read_bundle
from engines.training.crops import PreparedSet
from engines.training.trainer import TrainConfig, predict_raw, train
from stream.analysis import EVERY_FACE, Analyser
from stream.cli import app
from stream.config import DetectorSettings, Settings
from stream.video_score import score_video

runner = CliRunner()
FRAMES = 12
TRAIN_ARGS = ["--arch", "tiny", "--epochs", "6", "--batch-size", "32", "--lr", "0.1",
              "--no-augment", "--seed", "0"]


@dataclass(frozen=True)
class Trained:
    root: Path
    synth: Path
    prepared: Path
    bundle: Path
    summary: dict[str, Any]


def run(args: list[str]) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout[result.stdout.index("{"):]))


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, retinaface_weights: Path
) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp("training")
    with pytest.MonkeyPatch.context() as patch:
        # A store of its own (the random base goes there), the published face weights beside.
        patch.setenv("DFSTREAM_HOME", str(root / "home"))
        patch.setenv("DFSTREAM_WEIGHTS_DIR", str(retinaface_weights.parent))
        synth, prepared = root / "synth", root / "prepared"
        run(["data", "synth", "--out", str(synth), "--videos", "40", "--frames", str(FRAMES),
             "--seed", "5"])
        prep = run(["data", "prepare", str(synth / "manifest.csv"), "--out", str(prepared),
                    "--frames", str(FRAMES)])
        assert prep["prepared"] == 40 and prep["without_face"] == [] and prep["failed"] == {}
        bundle = root / "tiny.safetensors"
        summary = run(["train", str(prepared), "--out", str(bundle), *TRAIN_ARGS])
        yield Trained(root, synth, prepared, bundle, summary)


def test_training_reports_the_papers_trainable_set_and_a_falling_loss(trained: Trained) -> None:
    summary = trained.summary
    assert summary["trainable"] == 898  # tiny: 6 LayerNorms x 2 x 64 + head 64 x 2 + 2
    assert summary["changed_frozen"] == 0
    assert summary["paired_fakes"] > 0
    ce = [epoch["loss"]["ce"] for epoch in summary["epochs"]]
    assert ce[-1] < ce[0] - 0.05, ce
    assert summary["val"]["auroc"] >= 0.8, summary["val"]
    assert Path(summary["bundle"]).is_file() and len(summary["bundle_sha256"]) == 64


def test_only_layernorms_and_the_head_differ_from_the_base(trained: Trained) -> None:
    bundle = read_bundle(trained.bundle)
    assert bundle.base is not None
    base = load_base(bundle.base.id, expected_sha256=bundle.base.sha256)
    model = model_from_bundle(bundle, base)
    tuned = set(model.trainable_names())
    state = model.state_dict()
    frozen_changed = [n for n, t in base.tensors.items()
                      if n not in tuned and not torch.equal(state[n], t.to(state[n].dtype))]
    tuned_changed = [n for n in tuned if n in base.tensors
                     and not torch.equal(state[n], base.tensors[n].to(state[n].dtype))]
    assert frozen_changed == []
    assert len(tuned_changed) >= len([n for n in tuned if n in base.tensors]) // 2
    assert bundle.metrics["val_video"]["auroc"] == trained.summary["val"]["auroc"]


def test_the_held_out_test_split_ranks_fakes_above_reals(trained: Trained) -> None:
    from engines.metrics import ranking_metrics, video_means

    bundle = read_bundle(trained.bundle)
    assert bundle.base is not None
    model = model_from_bundle(bundle, load_base(bundle.base.id))
    prepared = PreparedSet.open(trained.prepared)
    test = prepared.split("test")
    crops, _, owners = prepared.arrays(test)
    labels = np.array([v.target for v in test])
    metrics = ranking_metrics(labels, video_means(predict_raw(model, crops, "cpu"), owners,
                                                  len(test)))
    assert metrics.auroc >= 0.7, metrics  # held out from training and from model selection


def test_a_resumed_run_continues_exactly_where_it_stopped(trained: Trained, tmp_path: Path) -> None:
    prepared = PreparedSet.open(trained.prepared)
    base = load_base(read_bundle(trained.bundle).base.id)  # type: ignore[union-attr]
    config = TrainConfig(arch="tiny", epochs=3, batch_size=32, lr=0.1, augment=False, seed=1)
    before = {name: tensor.clone() for name, tensor in base.tensors.items()}
    whole = train(prepared, base, config)
    assert all(torch.equal(before[n], t) for n, t in base.tensors.items())  # base untouched

    class Interrupt(Exception):
        pass

    def stop_in_epoch_3(epoch: int, step: int, steps: int, loss: float) -> None:
        if epoch == 3:
            raise Interrupt

    checkpoint = tmp_path / "run.train.pt"
    with pytest.raises(Interrupt):
        train(prepared, base, config, checkpoint=checkpoint, progress=stop_in_epoch_3)
    resumed = train(prepared, base, config, checkpoint=checkpoint, resume=True)
    assert resumed.resumed_from == 2
    assert resumed.steps == whole.steps
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    for name, tensor in whole.bundle.tensors.items():
        torch.testing.assert_close(resumed.bundle.tensors[name], tensor, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="other settings"):
        train(prepared, base, TrainConfig(**{**config.__dict__, "lr": 0.2}),
              checkpoint=checkpoint, resume=True)


def test_the_service_loader_scores_a_prepared_video_as_training_does(trained: Trained) -> None:
    settings = Settings()
    detector = DetectorSettings(arch="tiny", bundle=str(trained.bundle), device="cpu",
                                backend="torch")
    analyser, info = Analyser.load(settings, EVERY_FACE, detector=detector)
    assert info.trained and info.bundle == trained.bundle.stem
    # synth's manifest marks every video synthetic; prepare and train carry it to the bundle.
    assert info.synthetic and info.warning is not None and "SYNTHETIC" in info.warning
    assert info.crop == settings.faces.crop
    prepared = PreparedSet.open(trained.prepared)
    video = prepared.split("test")[0]
    crops = prepared.load(video)
    model = model_from_bundle(read_bundle(trained.bundle))
    trained_p = dict(zip(crops.frame_index.tolist(),
                         predict_raw(model, crops.crops, "cpu").tolist(), strict=True))
    path = trained.synth / f"{video.id}.mp4"
    live = score_video(path, analyser, frames=FRAMES)
    served = {f.index: f.faces[0].raw_p_fake for f in live.frames if f.faces}
    assert set(served) == set(trained_p)
    assert max(abs(served[i] - trained_p[i]) for i in served) <= 1e-5


def test_calibration_fitted_on_the_held_out_split_lowers_its_ece(trained: Trained) -> None:
    out = trained.root / "calibrated.safetensors"
    report = run(["calibrate", str(trained.prepared), "--bundle", str(trained.bundle),
                  "--out", str(out), "--method", "platt", "--report",
                  str(trained.root / "calibration")])
    assert report["ece_after"] < report["ece_before"]
    assert report["nll_after"] <= report["nll_before"] + 1e-9
    temperature = run(["calibrate", str(trained.prepared), "--bundle", str(trained.bundle),
                       "--out", str(trained.root / "t.safetensors"), "--method", "temperature"])
    # Temperature scaling minimises the NLL (T = 1 is among its choices); ECE it does not.
    assert temperature["nll_after"] <= temperature["nll_before"] + 1e-9
    assert Path(report["reliability_plot"]).stat().st_size > 1000
    calibrated = read_bundle(out)
    assert calibrated.calibration["method"] == "platt"
    assert calibrated.metrics["calibration"]["split"] == "val"
    assert calibrated.metrics["calibration"]["crops"] == report["crops"]
    slerped = run(["calibrate", str(trained.prepared), "--bundle", str(trained.bundle),
                   "--out", str(trained.root / "slerp.safetensors"), "--method", "platt",
                   "--slerp"])
    assert slerped["fitted_on"] == 5 * slerped["crops"]


def test_eval_reports_the_papers_metrics_and_they_recompute_from_its_videos(
    trained: Trained,
) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    report = run(["eval", str(trained.prepared), "--bundle", str(trained.bundle),
                  "--split", "test", "--bootstrap", "200",
                  "--report", str(trained.root / "eval")])
    videos = report["videos"]
    labels = [v["label"] for v in videos]
    scores = [v["p_fake"] for v in videos]
    assert report["video"]["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert report["video"]["ap"] == pytest.approx(average_precision_score(labels, scores))
    low, high = report["video"]["bootstrap_95"]["auroc"]
    assert low <= report["video"]["auroc"] <= high
    assert 0.0 <= report["video"]["eer"] <= 1.0 and 0.0 <= report["ece"] <= 1.0
    assert set(report["per_manipulation"]) <= {"swap-blend", "swap-colour", "swap-blur",
                                               "swap-sharpen"}
    assert Path(report["report"]["markdown"]).read_text().startswith("# Evaluation")
    # Each video's score is what `dfstream score` gives it: the same path, uncalibrated mean.
    first = videos[0]
    scored = run(["score", str(trained.synth / f"{first['id']}.mp4"), "--frames", str(FRAMES),
                  "--arch", "tiny", "--config", str(_bundle_config(trained))])
    assert scored["raw_p_fake"] == pytest.approx(first["p_fake"], abs=1e-5)


def _bundle_config(trained: Trained) -> Path:
    config = trained.root / "score.yaml"
    config.write_text(f"detector:\n  arch: tiny\n  bundle: {trained.bundle}\n  device: cpu\n")
    return config


def test_serving_with_another_crop_style_than_training_warns(
    trained: Trained, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings()
    other = "reference" if settings.faces.crop == "fast" else "fast"
    settings.faces.crop = other  # type: ignore[assignment]
    detector = DetectorSettings(arch="tiny", bundle=str(trained.bundle), device="cpu",
                                backend="torch")
    with caplog.at_level("WARNING", logger="stream.analysis"):
        Analyser.load(settings, EVERY_FACE, detector=detector)
    assert f"faces.crop is {other}" in caplog.text


def test_eval_operating_point_replays_the_videos_through_the_live_path(trained: Trained) -> None:
    result = run(["eval", str(trained.prepared), "--bundle", str(trained.bundle), "--split",
                  "test", "--operating-point", "--false-alerts-per-hour", "1000", "--rule",
                  "cusum"])
    assert result["rule"] == "cusum" and set(result["parameters"]) == {
        "cusum_prior", "cusum_h", "cusum_exit"}
    videos = PreparedSet.open(trained.prepared).split("test")
    assert result["real_videos"] + result["fake_videos"] == len(videos)
    # FRAMES frames per clip at the synth's 5 fps, all of them analysed at 5 fps.
    assert result["real_hours"] == pytest.approx(result["real_videos"] * FRAMES / 5 / 3600)
    assert result["met"] == (result["measured_false_alerts_per_hour"] <= 1000)
    assert {"measured_false_alerts_per_hour", "detection_delay_s"} <= set(result)


def test_a_cameras_real_footage_gives_its_stream_calibration(trained: Trained) -> None:
    from engines.stream_calibrations import load

    # The "camera": the train split's real videos, prepared like any footage.
    reals = [line for line in (trained.synth / "manifest.csv").read_text().splitlines()[1:]
             if ",real," in line and ",train," in line][:6]
    manifest = trained.root / "camera.csv"
    manifest.write_text("path,label,source_id,split\n" + "\n".join(
        str(trained.synth / line.split(",")[0]) + ",real,,train" for line in reals) + "\n")
    camera = trained.root / "camera-prep"
    run(["data", "prepare", str(manifest), "--out", str(camera), "--frames", str(FRAMES)])
    report = run(["calibrate-stream", str(camera), "--bundle", str(trained.bundle), "--fakes",
                  str(trained.prepared), "--split", "val", "--name", "lobby-cam",
                  "--overwrite"])
    assert report["calibration"]["method"] == "platt" and report["fitted_on"]["camera_crops"]
    assert report["camera_after"]["mean_p_fake"] < report["fakes_after"]["mean_p_fake"]
    stored = load("lobby-cam")
    assert stored.bundle == trained.bundle.stem
    # Bound to the weights the service runs with this bundle, refused with any other.
    _analyser, info = Analyser.load(Settings(), EVERY_FACE, detector=DetectorSettings(
        arch="tiny", bundle=str(trained.bundle), device="cpu", backend="torch"))
    stored.check_weights(info.weights_id)
    with pytest.raises(ValueError, match="fitted for detector"):
        stored.check_weights("0" * 64)


def test_torchrun_trains_data_parallel_and_rank_zero_writes_the_bundle(trained: Trained) -> None:
    import subprocess
    import sys

    out = trained.root / "ddp.safetensors"
    dfstream = Path(sys.executable).parent / "dfstream"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(dfstream), "train", str(trained.prepared), "--out", str(out), "--arch", "tiny",
         "--epochs", "2", "--batch-size", "32", "--lr", "0.1", "--no-augment", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"bundle_sha256"') == 1  # one summary: rank 0's
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["processes"] == 2 and summary["changed_frozen"] == 0
    assert summary["trainable"] == 898 and len(summary["epochs"]) == 2
    assert model_from_bundle(read_bundle(out)) is not None
