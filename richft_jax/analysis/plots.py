"""Figures of the linear-regime analyses: each saved as PNG with its numbers as JSON beside it.

Every function takes the JSON-able results of `richft_jax.analysis.regime` and writes
PATH.png and PATH.json, so a figure can always be checked against (or redrawn from) its data.
"""

import json
import os

import matplotlib
from etils import epath

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from richft_jax import paths, results  # noqa: E402
from richft_jax.report_figures import save_figure  # noqa: E402


def save(fig, data: dict, path: str | os.PathLike) -> epath.Path:
    """Writes `fig` to PATH.png and `data` to PATH.json (local or gs://); returns the PNG
    path."""
    path = paths.path(path, "--out")
    paths.make_dirs(path.parent, "--out")
    png = path.with_suffix(".png")
    save_figure(fig, png, dpi=110, bbox_inches="tight")
    path.with_suffix(".json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    return png


def _split_label(r: dict) -> str:
    return f"{r['domain']}/{r['split']}" + (" (test)" if r["is_test_domain"] else "")


def taylor_agreement(per_run: dict[str, list[dict]], path) -> epath.Path:
    """Per split: agreement of each run with its Taylor model, and the relative distances."""
    names = list(per_run)
    labels = [_split_label(r) for r in per_run[names[0]]]
    keys = ("agreement", "logits_relative_distance", "features_relative_distance")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    width = 0.8 / len(names)
    for ax, key in zip(axes, keys, strict=True):
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(labels))]
            ax.bar(xs, [r[key] for r in per_run[name]], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=60)
        ax.set_title(key.replace("_", " "))
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle("Fine-tuned network vs its first-order Taylor model around θ0")
    return save(fig, {"per_run": per_run}, path)


def taylor_trajectory(per_run: dict[str, list[dict]], path) -> epath.Path:
    """Agreement and relative logit distance (ID and OOD) along the checkpoints of each run."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in per_run.items():
        steps = [p["step"] for p in points]
        for part, style in (("id", "-o"), ("ood", "--s")):
            for ax, key in zip(axes, ("agreement", "logits_relative_distance"), strict=True):
                ax.plot(steps, [p[key][part] for p in points], style, label=f"{name} {part}")
    axes[0].set(xlabel="step", ylabel="agreement with Taylor model")
    axes[1].set(xlabel="step", ylabel="relative logit distance")
    axes[0].legend(fontsize=8)
    return save(fig, {"per_run": per_run}, path)


def interpolation(per_run: dict[str, list[dict]], path) -> epath.Path:
    """Accuracy per domain along α for weight (solid) and representation (dashed)
    interpolation; training domains on their out split, the test domain on its in split."""
    fig, axes = plt.subplots(1, len(per_run), figsize=(6 * len(per_run), 4), squeeze=False)
    for ax, (name, rows) in zip(axes[0], per_run.items(), strict=True):
        shown = [r for r in rows if results.is_id(r) or results.is_ood(r)]
        domains = list(dict.fromkeys(r["domain"] for r in shown))
        for c, domain in enumerate(domains):
            for kind, style in (("weight", "-"), ("representation", "--")):
                pts = sorted(
                    (r["alpha"], r["accuracy"])
                    for r in shown
                    if r["domain"] == domain and r["kind"] == kind
                )
                test = any(r["is_test_domain"] for r in shown if r["domain"] == domain)
                ax.plot(
                    [a for a, _ in pts],
                    [acc for _, acc in pts],
                    style,
                    color=f"C{c}",
                    lw=2.5 if test else 1.2,
                    label=f"{domain}{' (test)' if test else ''} {kind}",
                )
        ax.set(xlabel="α  (0: fine-tuned, 1: pretrained + initial head)", ylabel="accuracy")
        ax.set_title(name)
        ax.legend(fontsize=7)
    return save(fig, {"per_run": per_run}, path)


def linear_finetune(per_run: dict[str, dict], path) -> epath.Path:
    """ID and OOD accuracy of fine-tuning against linear fine-tuning, per run."""
    names = list(per_run)
    fig, ax = plt.subplots(figsize=(2.5 + 2.5 * len(names), 4))
    bars = [
        ("fine-tuning ID", "finetune", "id_accuracy"),
        ("linear FT ID", "linear_finetune", "id_accuracy"),
        ("fine-tuning OOD", "finetune", "ood_accuracy"),
        ("linear FT OOD", "linear_finetune", "ood_accuracy"),
    ]
    width = 0.8 / len(bars)
    for i, (label, which, key) in enumerate(bars):
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [per_run[n][which][key] for n in names], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set(ylabel="accuracy (training-domain validation)", ylim=(0, 1))
    ax.legend(fontsize=8)
    return save(fig, {"per_run": per_run}, path)
