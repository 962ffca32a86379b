"""``dfstream eval`` (a detector on a prepared set, the papers' protocol) and ``dfstream
calibrate`` (a bundle's calibration fitted on a held-out split)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stream.cli import ConfigOption, app, console, fail, progress_bar, settings_or_exit

if TYPE_CHECKING:
    from engines.calibrated import CalibratedScorer
    from engines.checkpoints.catalog import BundleSummary
    from engines.training.crops import PreparedSet
    from stream.config import Settings

PreparedArgument = Annotated[Path, typer.Argument(help="A folder made by `dfstream data prepare`.")]
BundleOption = Annotated[Path, typer.Option("--bundle", help="The detector bundle (.safetensors).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ReportOption = Annotated[Path | None, typer.Option(
    "--report", help="Folder for the Markdown report and the PNG plots.", show_default=False)]


def _summary(bundle: Path) -> BundleSummary:
    from engines.checkpoints.catalog import bundle_summary

    if not bundle.is_file():
        raise fail(f"bundle {bundle} does not exist")
    return bundle_summary(bundle)


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
    from engines.training.crops import PreparedSet

    return PreparedSet.open(path)


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
    operating_point: Annotated[bool, typer.Option(
        "--operating-point", help="Instead: replay the split's videos at the analysis fps "
        "through the live scoring and propose alert parameters for --false-alerts-per-hour.")]
    = False,
    false_alerts_per_hour: Annotated[float | None, typer.Option(
        min=0.0, help="--operating-point: the target rate of false alerts per stream-hour on "
        "the real videos.", show_default=False)] = None,
    rule: Annotated[str | None, typer.Option(
        help="--operating-point: hysteresis or cusum (default: scoring.thresholds.rule).",
        show_default=False)] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Video-level AUROC, AP, EER, TPR at FPR 0.1/1/5%, accuracy, frame AUROC, ECE and a
    per-manipulation breakdown, with bootstrap intervals; the video score is the mean of the
    uncalibrated p_fake over the prepared frames, as in the papers. With --operating-point:
    alert parameters for a target false-alert rate, measured by replay."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from engines.evaluate import evaluate, score_prepared
    from engines.metrics import MetricsError

    settings = settings_or_exit(config)
    prepared_set = _prepared(prepared)
    if operating_point:
        if false_alerts_per_hour is None:
            raise fail("--operating-point needs --false-alerts-per-hour X (the target rate "
                       "per stream-hour)")
        result = _operating_point(settings, prepared_set, bundle, split, device,
                                  rule or settings.scoring.thresholds.rule,
                                  false_alerts_per_hour)
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            console.print(
                f"{result['rule']} {result['parameters']}: measured "
                f"{result['measured_false_alerts_per_hour']:.2f} false alerts per hour "
                f"(target {false_alerts_per_hour:g}) on {result['real_hours']:.3f} h of "
                f"{result['real_videos']} real videos; {result['fakes_detected']}/"
                f"{result['fake_videos']} fakes alerted, median delay "
                f"{result['detection_delay_s']} s. Apply: dfstream thresholds set --from FILE "
                "(the --json output)")
        return
    scorer = _scorer(bundle, device)
    try:
        with progress_bar(TextColumn(f"scoring the {split} split"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn()) as bar:
            task = bar.add_task("", total=None)
            scores = score_prepared(prepared_set, split, scorer, progress=lambda done, total:
                                    bar.update(task, completed=done, total=total))
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


def _operating_point(
    settings: Settings, prepared_set: PreparedSet, bundle: Path, split: str, device: str,
    rule: str, false_alerts_per_hour: float,
) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from stream.analysis import Analyser, CropPolicy
    from stream.config import DetectorSettings
    from stream.data.manifest import DatasetError, load_manifest
    from stream.operating_point import choose, trace_video

    if rule not in ("hysteresis", "cusum"):
        raise fail(f"unknown rule {rule!r}; choose hysteresis or cusum")
    manifest = prepared_set.settings.get("manifest")
    try:
        dataset = load_manifest(Path(manifest)) if manifest else None
    except DatasetError as exc:
        raise fail(f"the videos of {prepared_set.root} are needed for the replay: {exc}") from None
    if dataset is None:
        raise fail(f"{prepared_set.root} does not say which manifest it was prepared from")
    wanted = {v.id for v in prepared_set.split(split)}
    entries = [e for e in dataset.by_split(split) if e.id in wanted]
    if not entries:
        raise fail(f"{prepared_set.root} has no {split!r} videos with a face to replay")
    summary = _summary(bundle)
    detector = DetectorSettings(arch=summary.arch, bundle=str(bundle), device=device,
                                backend="torch")
    analyser, _info = Analyser.load(settings, CropPolicy.live(settings.pipeline),
                                    detector=detector)
    fps = settings.ingest.analysis_fps
    traces = []
    with progress_bar(TextColumn("{task.description}"), BarColumn(),
                      MofNCompleteColumn()) as bar:
        task = bar.add_task(f"replay at {fps:g} fps", total=len(entries))
        for entry in entries:
            traces.append(trace_video(entry, analyser, fps))
            bar.advance(task)
        search = bar.add_task(f"{rule} parameters", total=None)
        try:
            result = choose(traces, rule, settings.scoring.thresholds, false_alerts_per_hour,
                            fps=fps, progress=lambda n, total: bar.update(search, completed=n,
                                                                          total=total))
        except ValueError as exc:
            raise fail(str(exc)) from None
    return {"bundle": str(bundle), "prepared": str(prepared_set.root), "split": split,
            **result}


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
        raise fail(f"unknown calibration method {method!r}; choose temperature or platt")
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


@app.command("calibrate-stream")
def calibrate_stream_command(
    camera: Annotated[Path, typer.Argument(help="A folder made by `dfstream data prepare` from "
                                           "the camera's footage, every video labelled real.")],
    bundle: BundleOption,
    fakes: Annotated[Path, typer.Option(help="A prepared set whose --split fakes form the fake "
                                        "class (e.g. the bundle's calibration set).")],
    name: Annotated[str, typer.Option(help="The calibration's name; a stream selects it with "
                                      "`calibration: NAME` in its spec.")],
    split: Annotated[str, typer.Option(help="The split of --fakes to take fakes from.")] = "val",
    method: Annotated[str, typer.Option(help="platt or temperature.")] = "platt",
    overwrite: Annotated[bool, typer.Option(help="Replace a calibration of that name.")] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Fit a calibration for one camera on its real footage (the real class) and a prepared
    set's fakes, and store it by name for `streams[].calibration`: the camera's own reals then
    set where "real" lies for that stream."""
    from engines.calibration import CalibrationError
    from engines.checkpoints.bundle import model_from_bundle, read_bundle
    from engines.checkpoints.errors import CheckpointError
    from engines.stream_calibrations import (
        StreamCalibrationError,
        fit_stream_calibration,
        save,
    )

    if method not in ("temperature", "platt"):
        raise fail(f"unknown calibration method {method!r}; choose platt or temperature")
    settings_or_exit(config)
    camera_set, fakes_set = _prepared(camera), _prepared(fakes)
    _summary(bundle)
    try:
        loaded = read_bundle(bundle)
        calibration, report = fit_stream_calibration(
            name, loaded, bundle.stem, model_from_bundle(loaded), camera_set, fakes_set,
            split=split, method=method)  # type: ignore[arg-type]
        path = save(calibration, overwrite=overwrite)
    except (CheckpointError, CalibrationError, StreamCalibrationError, ValueError) as exc:
        raise fail(str(exc)) from None
    summary = {"name": name, "path": str(path), **calibration.to_dict(), **report}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    before, after = report["camera_before"], report["camera_after"]
    console.print(f"[green]stream calibration[/green] {name} ({path}): "
                  f"{calibration.calibrator.label}; camera mean p_fake "
                  f"{before['mean_p_fake']:.3f} -> {after['mean_p_fake']:.3f}. Use it with "
                  f"`calibration: {name}` in a stream's spec.")
