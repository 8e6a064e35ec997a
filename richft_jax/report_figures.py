"""The report's figures and their numbers, drawn from run records (never from copied numbers).

- `plot_id_vs_ood`: ID against OOD accuracy per method (DomainBed's selections);
- the paper's Figure 2: per method, the cloud of (ID, OOD) points over every choice of one
  hyper-parameter setting per test domain, each point the mean over test domains of that
  setting's mean over trial seeds, at each run's training-domain-validation step (the paper's
  README: (2 lr × 3 weight decays)^4 = 1,296 points per method on the small datasets);
- the paper's Figure 3: OOD and ID accuracy against the penultimate dropout rate, selected the
  DomainBed way at each rate (the hyper-parameter setting with the best validation score per
  test domain and trial seed); one curve per `RATE_CURVES` entry: pretrained, and from
  scratch (configs/demo_scratch.py, its methods named with the "_scratch" suffix), and per
  pretrained backbone where the runs hold several (never pooled).
"""

import collections
import io
import os

import numpy as np

from richft_jax import paths
from richft_jax.selection import aggregate, mean_se, select_run

MAX_CLOUD_POINTS = 2_000_000  # DomainNet's (2×3)^6 = 46,656; beyond this a cloud is skipped.
RATE_METHODS = ("erm", "very_large_dropout")  # Penultimate dropout at one rate, 0 included.
# The rate curves: label -> suffix of RATE_METHODS in the records' method names (from-scratch
# runs record "erm_scratch", "very_large_dropout_scratch": configs/demo_scratch.py).
RATE_CURVES = {"pretrained": "", "from scratch": "_scratch"}
COLORS = [f"C{i}" for i in range(10)]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
SELECTION = "training_domain_validation"


def _style(i: int) -> dict:
    """Distinct colour and marker for the i-th method of a figure (cycles after 10 × 12)."""
    return {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)]}


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> None:
    """Writes `fig` to `path` (local or gs://; the format from its suffix) and closes it:
    drawn into memory, then written as one file or object (matplotlib writes local files
    only)."""
    target = paths.path(path, "figure")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=target.suffix.lstrip(".") or "png", **savefig_kwargs)
    target.write_bytes(buffer.getvalue())
    _pyplot().close(fig)


def setting_means(records: list, dataset: str, method: str) -> dict:
    """{test domains: {setting: (ID mean, OOD mean, trial seeds)}}: per hyper-parameter setting,
    the means over trial seeds of its runs' selected ID and OOD accuracies (the paper's per
    (dataset, test env, lr, weight decay) average over 3 trials)."""
    by_key = collections.defaultdict(list)
    for r in records:
        if r.dataset == dataset and r.method == method:
            by_key[(r.test_domains, r.setting, r.trial_seed)].append(r)
    per_seed = collections.defaultdict(dict)
    for (test, setting, seed), runs in by_key.items():
        best = sorted(runs, key=lambda r: r.scores[SELECTION][0])[-1]  # Duplicates: the best.
        per_seed[(test, setting)][seed] = best.scores[SELECTION]
    out = collections.defaultdict(dict)
    for (test, setting), seeds in sorted(per_seed.items(), key=lambda kv: str(kv[0])):
        ids = [v[2] for v in seeds.values()]
        oods = [v[1] for v in seeds.values()]
        out[test][setting] = (float(np.mean(ids)), float(np.mean(oods)), sorted(seeds))
    return dict(out)


def cloud_points(per_domain: dict) -> np.ndarray:
    """(points, 2) array of (ID, OOD): every choice of one setting per test domain, averaged
    over the test domains; None when there would be more than MAX_CLOUD_POINTS."""
    arrays = [np.array([v[:2] for v in s.values()]) for _, s in sorted(per_domain.items())]
    if not arrays or np.prod([len(a) for a in arrays], dtype=float) > MAX_CLOUD_POINTS:
        return None
    sums = np.zeros((1, 2))
    for a in arrays:
        sums = (sums[:, None, :] + a[None, :, :]).reshape(-1, 2)
    return sums / len(arrays)


def cloud(records: list, dataset: str) -> dict:
    """{method: {"points": (N, 2) or None, "selected": (ID, OOD) DomainBed's selection averaged
    over test domains, "domains": test domains it has, "seeds": max trial seeds per setting}}."""
    agg = aggregate([r for r in records if r.dataset == dataset], SELECTION)
    out = {}
    for method in sorted({r.method for r in records if r.dataset == dataset}):
        per_domain = setting_means(records, dataset, method)
        cells = [v for k, v in agg.items() if k[1] == method]
        out[method] = {
            "points": cloud_points(per_domain),
            "selected": (
                float(np.mean([np.mean(v["id"]) for v in cells])),
                float(np.mean([np.mean(v["ood"]) for v in cells])),
            ),
            "domains": sorted(per_domain),
            "seeds": max(len(v[2]) for s in per_domain.values() for v in s.values()),
        }
    return out


def plot_cloud(records: list, dataset: str, path: str | os.PathLike) -> None:
    """The paper's Figure 2 for one dataset: each method's cloud (small points) and its
    DomainBed-selected point (large, black edge); single-setting methods are one point. Methods
    without every test domain are left out (their averages are over other domains), named
    under the plot."""
    plt = _pyplot()
    data = cloud(records, dataset)
    n_domains = max(len(v["domains"]) for v in data.values())
    left_out = [m for m, v in data.items() if len(v["domains"]) < n_domains]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for i, (method, v) in enumerate(data.items()):
        if method in left_out:
            continue
        style, pts = _style(i), v["points"]
        n = 0 if pts is None else len(pts)
        if n > 1:
            alpha = max(0.08, min(0.6, 30 / n))
            ax.scatter(100 * pts[:, 0], 100 * pts[:, 1], s=10, alpha=alpha, linewidths=0, **style)
        label = f"{method} ({n} point{'s' * (n != 1)})"
        x, y = v["selected"]
        ax.scatter([100 * x], [100 * y], s=90, edgecolor="black", label=label, **style)
    seeds = max(v["seeds"] for m, v in data.items() if m not in left_out)
    ax.set_title(
        f"{dataset}: ID vs OOD, every choice of one hyper-parameter setting per test domain\n"
        f"each point: mean over {n_domains} test domains of {seeds}-seed means at the "
        "training-domain-validation step; large: DomainBed's selection",
        fontsize=8,
    )
    ax.set_xlabel("ID accuracy (%, training domains' out splits)")
    ax.set_ylabel("OOD accuracy (%, test domain's in split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if left_out:
        note = f"left out (not every test domain): {', '.join(left_out)}"
        fig.text(0.01, 0.005, note, fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.02 if left_out else 0, 1, 1))
    save_figure(fig, path, dpi=120)


def _rate_family(records: list, dataset: str, suffix: str) -> list:
    """`dataset`'s penultimate-dropout runs: of RATE_METHODS + `suffix` (one of RATE_CURVES)."""
    methods = {m + suffix for m in RATE_METHODS}
    return [
        r
        for r in records
        if r.dataset == dataset and r.base_method in methods and r.dropout_rate is not None
    ]


def rate_curve(
    records: list,
    dataset: str,
    error_bar: str = "domainbed",
    suffix: str = "",
    backbone: str | None = None,
) -> dict:
    """{rate: {"ood": (mean, ±), "id": (mean, ±), "seeds": n, "domains": n}} over the
    penultimate-dropout runs (RATE_METHODS + `suffix`: one of RATE_CURVES) of `dataset` from
    `backbone` (RunRecord.backbone; None: their only one, never several pooled), at its rates, on
    the test domains each has; empty unless the runs (all backbones) hold two rates or more. At
    each rate, DomainBed's selection per (test domains, trial seed) over the settings; then per
    trial seed the mean over test domains; then mean ± error bar over trial seeds."""
    family = _rate_family(records, dataset, suffix)
    if len({r.dropout_rate for r in family}) < 2:
        return {}
    backbones = {r.backbone for r in family}
    if backbone is None and len(backbones) > 1:
        raise ValueError(f"{dataset}'s rate curve{suffix}: several backbones, {sorted(backbones)}.")
    family = [r for r in family if backbone is None or r.backbone == backbone]
    rates = sorted({r.dropout_rate for r in family})
    # Every rate over the same test domains: those all rates have (an unfinished sweep's
    # missing domain would otherwise move one rate's average and not the others').
    common = set.intersection(
        *({r.test_domains for r in family if r.dropout_rate == x} for x in rates)
    )
    out = {}
    for rate in rates:
        groups = collections.defaultdict(list)
        for r in family:
            if r.dropout_rate == rate and r.test_domains in common:
                groups[(r.test_domains, r.trial_seed)].append(r)
        by_seed = collections.defaultdict(lambda: {"id": [], "ood": []})
        for (_, seed), runs in groups.items():
            best = select_run(runs, SELECTION).scores[SELECTION]
            by_seed[seed]["ood"].append(best[1])
            by_seed[seed]["id"].append(best[2])
        out[rate] = {
            key: mean_se([np.mean(v[key]) for _, v in sorted(by_seed.items())], error_bar)
            for key in ("ood", "id")
        }
        out[rate]["seeds"] = len(by_seed)
        out[rate]["domains"] = len({t for t, _ in groups})
        out[rate]["test_domains"] = sorted({t for t, _ in groups})
    return out


def rate_curves(records: list, dataset: str, error_bar: str = "domainbed") -> dict:
    """{label: rate_curve} of the RATE_CURVES `dataset`'s records hold (two rates or more), one
    per backbone: labelled as RATE_CURVES where its runs hold one backbone, else "label
    (backbone)" each, in the order of the backbones' labels (a backbone's curve may hold one
    rate: a point beside the others)."""
    curves = {}
    for label, suffix in RATE_CURVES.items():
        names = {r.backbone: r.backbone_label for r in _rate_family(records, dataset, suffix)}
        for backbone, name in sorted(names.items(), key=lambda kv: (kv[1], kv[0])):
            curve = rate_curve(records, dataset, error_bar, suffix, backbone)
            if curve:
                curves[label if len(names) == 1 else f"{label} ({name})"] = curve
    return curves


def rate_table(curve: dict, dataset: str, error_bar_text: str, backbone: str = "") -> str:
    """The rate curve's numbers as a markdown table (%); `backbone` (a `rate_curves` label)
    named in its title when given."""
    lines = [
        f"**{dataset}{', ' + backbone if backbone else ''}, accuracy against the penultimate "
        "dropout rate** (training-domain validation at each rate; mean over test domains)\n",
        "| dropout rate | seeds | test domains | OOD | ID |",
        "|---|---|---|---|---|",
    ]
    for rate, v in curve.items():
        ood, id_ = (
            f"{100 * v[k][0]:.1f}" + (f" ± {100 * v[k][1]:.1f}" if v["seeds"] > 1 else "")
            for k in ("ood", "id")
        )  # One seed: the mean alone, as the tables print it.
        lines.append(f"| {rate:g} | {v['seeds']} | {v['domains']} | {ood} | {id_} |")
    domains = ", ".join(next(iter(curve.values()))["test_domains"])
    lines.append(
        f"\nTest domains: {domains} (those every rate has). {error_bar_text}, over trial seeds "
        "of each seed's mean over test domains."
    )
    return "\n".join(lines)


def plot_rate_curve(curves: dict, dataset: str, path: str | os.PathLike) -> None:
    """The paper's Figure 3: OOD (left) and ID (right) accuracy against the dropout rate, one
    line per backbone ({label: rate_curve}), rates evenly spaced (0.9, 0.95, 0.99 would crowd a
    linear axis), error bars as the table's."""
    plt = _pyplot()
    rates = sorted({r for curve in curves.values() for r in curve})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, name in ((axes[0], "ood", "OOD"), (axes[1], "id", "ID")):
        for i, (label, curve) in enumerate(curves.items()):
            xs = [rates.index(r) for r in curve]
            means = [100 * v[key][0] for v in curve.values()]
            bars = [100 * np.nan_to_num(v[key][1]) for v in curve.values()]
            seeds = max(v["seeds"] for v in curve.values())
            text = f"{label} ({seeds} seed{'s' * (seeds != 1)})"
            ax.errorbar(xs, means, yerr=bars, capsize=3, label=text, **_style(i))
        ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
        ax.set_xlabel("penultimate dropout rate")
        ax.set_ylabel(f"{name} accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    domains = {", ".join(next(iter(c.values()))["test_domains"]) for c in curves.values()}
    fig.suptitle(
        f"{dataset}: accuracy against the dropout rate (training-domain validation; mean over "
        f"test domains {' / '.join(sorted(domains))})",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_id_vs_ood(records: list, path: str | os.PathLike) -> None:
    """ID (x) against OOD (y) accuracy per method (training-domain validation): one point per
    test domain plus the mean over them, large."""
    plt = _pyplot()
    agg = aggregate(records, SELECTION)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, method in enumerate(sorted({k[1] for k in agg})):
        pts = [(np.mean(v["id"]), np.mean(v["ood"])) for k, v in agg.items() if k[1] == method]
        xs, ys = (100 * np.array(a) for a in zip(*pts, strict=True))
        style = _style(i)
        ax.scatter(xs, ys, alpha=0.35, s=15, **style)
        ax.scatter([xs.mean()], [ys.mean()], s=70, edgecolor="black", label=method, **style)
    datasets = ", ".join(sorted({k[0] for k in agg}))
    ax.set_title(f"{datasets}: training-domain validation; small: each test domain", fontsize=9)
    ax.set_xlabel("ID accuracy (%, training domains' out splits)")
    ax.set_ylabel("OOD accuracy (%, test domain's in split)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_figures(records: list, out_dir: str | os.PathLike, error_bar: str = "domainbed") -> None:
    """Writes id_vs_ood.png, cloud_<dataset>.png and, where the records hold several dropout
    rates, dropout_rate_<dataset>.png (`rate_curves`) into `out_dir` (local or gs://)."""
    out_dir = paths.path(out_dir, "--out")
    plot_id_vs_ood(records, out_dir / "id_vs_ood.png")
    for dataset in sorted({r.dataset for r in records}):
        plot_cloud(records, dataset, out_dir / f"cloud_{dataset}.png")
        curves = rate_curves(records, dataset, error_bar)
        if curves:
            plot_rate_curve(curves, dataset, out_dir / f"dropout_rate_{dataset}.png")
