"""``dfstream eval`` (a detector on a prepared set, the papers' protocol) and ``dfstream
calibrate`` (a bundle's calibration fitted on a held-out split)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stream.cli import ConfigOption, app, console, fail, settings_or_exit

if TYPE_CHECKING:
    from engines.calibrated import CalibratedScorer
    from engines.checkpoints.catalog import BundleSummary

PreparedArgument = Annotated[Path, typer.Argument(help="A folder made by `dfstream data prepare`.")]
BundleOption = Annotated[Path, typer.Option("--bundle", help="The detector bundle (.safetensors).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ReportOption = Annotated[Path | None, typer.Option(
    "--report", help="Folder for the Markdown report and the PNG plots.", show_default=False)]


def _summary(bundle: Path) -> BundleSummary:
    from engines.checkpoints.catalog import bundle_summary
    from engines.checkpoints.errors import CheckpointError

    if not bundle.is_file():
        raise fail(f"bundle {bundle} does not exist")
    try:
        return bundle_summary(bundle)
    except CheckpointError as exc:
        raise fail(str(exc)) from None


def _scorer(bundle: Path, device: str) -> CalibratedScorer:
    """The bundle through the service's own loader (its calibration behind it)."""
    from engines.calibrated import CalibratedScorer
    from engines.calibration import Calibrator
    from engines.deepfake_detector import DetectorUnavailable, load_detector
    from stream.config import DetectorSettings

    summary = _summary(bundle)
    settings = DetectorSettings(arch=summary.arch, bundle=str(bundle), device=device,
                                backend="torch")
    try:
        engine, info = load_detector(settings)
    except (DetectorUnavailable, ValueError) as exc:
        raise fail(str(exc)) from None
    return CalibratedScorer(engine, Calibrator.from_dict(info.calibration))


def _prepared(path: Path) -> Any:
    from engines.training.crops import PreparedSet, PreparedSetError

    try:
        return PreparedSet.open(path)
    except PreparedSetError as exc:
        raise fail(str(exc)) from None


@app.command("eval")
def eval_command(
    prepared: PreparedArgument,
    bundle: BundleOption,
    split: Annotated[str, typer.Option(help="The split to evaluate.")] = "test",
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Operating threshold on "
                                             "the video score, for accuracy.")] = 0.5,
    bootstrap: Annotated[int, typer.Option(min=10, max=100_000, help="Bootstrap resamples.")]
    = 1000,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    report: ReportOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Video-level AUROC, AP, EER, TPR at FPR 0.1/1/5%, accuracy, frame AUROC, ECE and a
    per-manipulation breakdown, with bootstrap intervals; the video score is the mean of the
    uncalibrated p_fake over the prepared frames, as in the papers."""
    from engines.evaluate import evaluate, score_prepared
    from engines.metrics import MetricsError

    settings_or_exit(config)
    prepared_set = _prepared(prepared)
    scorer = _scorer(bundle, device)
    try:
        scores = score_prepared(prepared_set, split, scorer)
        result = evaluate(scores, threshold=threshold, bootstrap_rounds=bootstrap)
    except (MetricsError, ValueError) as exc:
        raise fail(str(exc)) from None
    result = {"bundle": str(bundle), "prepared": str(prepared), "split": split, **result}
    if report is not None:
        from engines.calibration import reliability
        from stream.report import markdown_report, reliability_plot, roc_plot

        plots = {
            "ROC": str(roc_plot(scores.video_labels, scores.video_scores(),
                                report / "roc.png", f"{bundle.stem} on {split}")),
            "reliability": str(reliability_plot(
                {"calibrated": reliability(scores.p_fake, scores.frame_labels),
                 "uncalibrated": reliability(scores.raw_p_fake, scores.frame_labels)},
                report / "reliability.png", f"{bundle.stem}: frames of {split}")),
        }
        text = markdown_report(result, bundle=bundle.name, prepared=str(prepared), split=split,
                               plots=plots)
        (report / "report.md").write_text(text)
        result["report"] = {"markdown": str(report / "report.md"), **plots}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    video = result["video"]
    console.print(
        f"{bundle.name} on {split} ({result['videos_evaluated']} videos): video AUROC "
        f"{video['auroc']:.4f}, AP {video['ap']:.4f}, EER {video['eer']:.4f}; frame AUROC "
        f"{result['frame']['auroc']:.4f}; ECE {result['ece']:.4f}"
    )


@app.command("calibrate")
def calibrate_command(
    prepared: PreparedArgument,
    bundle: BundleOption,
    out: Annotated[Path, typer.Option("--out", help="Where to write the calibrated bundle.")],
    split: Annotated[str, typer.Option(help="The held-out split to fit on.")] = "val",
    method: Annotated[str, typer.Option(help="temperature or platt.")] = "temperature",
    slerp: Annotated[bool, typer.Option(
        help="Also fit on slerp interpolations between same-class features of the set.")]
    = False,
    report: ReportOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Fit temperature or Platt scaling on a held-out prepared split and write the bundle with
    it (and the calibration set's name, size and date); NLL and ECE before and after."""
    from engines.calibration import CalibrationError
    from engines.checkpoints.bundle import model_from_bundle, read_bundle, save_bundle
    from engines.checkpoints.errors import CheckpointError
    from engines.recalibrate import recalibrate

    if method not in ("temperature", "platt"):
        raise fail(f"unknown calibration method {method!r}; choose temperature or platt", 2)
    settings_or_exit(config)
    prepared_set = _prepared(prepared)
    _summary(bundle)
    try:
        loaded = read_bundle(bundle)
        model = model_from_bundle(loaded)
        result = recalibrate(loaded, model, prepared_set, split=split,
                             method=method,  # type: ignore[arg-type]
                             slerp_copies=4 if slerp else 0)
    except (CheckpointError, CalibrationError, ValueError) as exc:
        raise fail(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    save_bundle(result.bundle, out)
    summary: dict[str, Any] = {"bundle": str(out), "from": str(bundle), "split": split,
                               "slerp": slerp, **result.as_dict()}
    if report is not None:
        from stream.report import reliability_plot

        summary["reliability_plot"] = str(reliability_plot(
            {"before": result.reliability_before, "after": result.reliability_after},
            report / "calibration.png", f"{bundle.stem} calibrated on {split}"))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console.print(f"[green]calibrated[/green] {out}: {result.calibrator.label}; ECE "
                  f"{result.ece_before:.4f} -> {result.ece_after:.4f}, NLL "
                  f"{result.nll_before:.4f} -> {result.nll_after:.4f}")
