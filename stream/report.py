"""What `dfstream eval` and `dfstream calibrate` write for people: a Markdown report, the ROC
curve and reliability diagrams as PNG (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engines.calibration import Reliability


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_plot(labels: np.ndarray, scores: np.ndarray, path: Path, title: str) -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, axis = plt.subplots(figsize=(4.8, 4.5))
    axis.plot(fpr, tpr, label=f"AUROC {roc_auc_score(labels, scores):.3f}")
    axis.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    axis.set_xlabel("false positive rate (real videos called fake)")
    axis.set_ylabel("true positive rate")
    axis.set_title(title, fontsize=10)
    axis.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reliability_plot(curves: Mapping[str, Reliability], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(4.8, 4.5))
    axis.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, curve in curves.items():
        filled = curve.counts > 0
        axis.plot(curve.mean_predicted[filled], curve.fraction_fake[filled], "o-",
                  label=f"{name} (ECE {curve.ece:.3f})")
    axis.set_xlabel("mean predicted p_fake")
    axis.set_ylabel("fraction fake")
    axis.set_title(title, fontsize=10)
    axis.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_report(report: Mapping[str, Any], *, bundle: str, prepared: str, split: str,
                    plots: Mapping[str, str]) -> str:
    video = report["video"]
    ci = video["bootstrap_95"]
    lines = [
        f"# Evaluation of `{bundle}`",
        "",
        f"Prepared set `{prepared}`, split `{split}`: {report['videos_evaluated']} videos, "
        f"{report['crops']} face crops. Video score: the mean of the frames' uncalibrated "
        "p_fake (largest face), as in the papers.",
        "",
        "| metric | value | 95% bootstrap interval |",
        "|---|---|---|",
        f"| video AUROC | {video['auroc']:.4f} | {ci['auroc'][0]:.4f} - {ci['auroc'][1]:.4f} |",
        f"| video AP | {video['ap']:.4f} | {ci['ap'][0]:.4f} - {ci['ap'][1]:.4f} |",
        f"| video EER | {video['eer']:.4f} | {ci['eer'][0]:.4f} - {ci['eer'][1]:.4f} |",
    ]
    for fpr, tpr in video["tpr_at_fpr"].items():
        lines.append(f"| TPR at FPR {float(fpr):.1%} | {tpr:.4f} | |")
    lines += [
        f"| accuracy at 0.5 | {video['accuracy_at_0.5']:.4f} | |",
        f"| accuracy at {video['threshold']:g} | {video['accuracy_at_threshold']:.4f} | |",
        f"| frame AUROC | {report['frame']['auroc']:.4f} | |",
        f"| ECE (calibrated, frames) | {report['ece']:.4f} | |",
        f"| ECE (uncalibrated, frames) | {report['ece_uncalibrated']:.4f} | |",
        "",
    ]
    if report["per_manipulation"]:
        lines += ["| manipulation | AUROC | AP | fake videos |", "|---|---|---|---|"]
        for name, m in report["per_manipulation"].items():
            lines.append(f"| {name} | {m['auroc']:.4f} | {m['ap']:.4f} | {m['fake_videos']} |")
        lines.append("")
    for name, path in plots.items():
        lines.append(f"![{name}]({Path(path).name})")
    return "\n".join(lines) + "\n"
