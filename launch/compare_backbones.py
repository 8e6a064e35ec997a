"""The table that compares demo backbones by their representation, from their records.

  python launch/compare_backbones.py docs/measurements/backbone_candidates/{shipped,letters6k}

Each DIR holds what launch/backbone_candidate.sh writes: probes.json (the source task's accuracy
and the linear probe per digits domain, analysis.backbone_richness) and richness_seed{S}_{D}.json
(per test domain D, the Taylor-model agreement and feature distortion of the seed-S ERM and
very-large-dropout runs). Cells are means over the test domains (and seeds) a DIR has; a part a
DIR lacks is "–". Prints one markdown table, a column per DIR.
"""

import argparse
import json
import pathlib
import statistics
import sys

ROWS = (  # (label, what it reads)
    ("source task test accuracy", ("source",)),
    ("linear probe, OOD (mean of 4 held-out domains)", ("probe", "mean_test_accuracy")),
    ("linear probe, ID validation", ("probe", "mean_id_validation_accuracy")),
    *(
        (f"linear probe, OOD {d}", ("probe_domain", d))
        for d in ("mnist", "mnist_m", "digits", "syn")
    ),
    *(
        (f"{who}: {what}, {split}", (key, who, split))
        for key, what in (
            ("agreement", "Taylor-model agreement"),
            ("relative_l2", "feature distortion (relative L2 from θ0)"),
            ("cka", "feature CKA with θ0"),
        )
        for who in ("ERM", "dropout")
        for split in ("ID", "OOD")
    ),
)


def read(directory: pathlib.Path) -> dict:
    """{row key: value} of one backbone's records (missing parts absent)."""
    values = {}
    probes = directory / "probes.json"
    if probes.exists():
        record = json.loads(probes.read_text())
        values[("source",)] = record.get("letters", {}).get("letters_test_accuracy")
        probe = record.get("linear_probe") or {}
        for key in ("mean_test_accuracy", "mean_id_validation_accuracy"):
            values[("probe", key)] = probe.get(key)
        for d, v in (probe.get("domains") or {}).items():
            values[("probe_domain", d)] = v["test_accuracy"]
    runs = {"ERM": [], "dropout": []}
    for path in sorted(directory.glob("richness_seed*_*.json")):
        for run in json.loads(path.read_text()).get("runs", []):
            runs["ERM" if run["dropout_rate"] == 0 else "dropout"].append(run)
    for who, group in runs.items():
        for split in ("ID", "OOD"):
            s = split.lower()
            if group:
                values[("agreement", who, split)] = statistics.mean(
                    r["taylor"]["agreement"][s] for r in group
                )
                for key in ("relative_l2", "cka"):
                    values[(key, who, split)] = statistics.mean(
                        r["feature_distortion"][s][key] for r in group
                    )
    return {k: v for k, v in values.items() if v is not None}


def table(directories: list[pathlib.Path]) -> str:
    """The markdown table: a row per measurement, a column per backbone directory."""
    columns = [read(d) for d in directories]
    lines = [
        "| | " + " | ".join(d.name for d in directories) + " |",
        "|---|" + "---|" * len(directories),
    ]
    for label, key in ROWS:
        cells = [f"{c[key]:.3f}" if key in c else "–" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("dirs", nargs="+", type=pathlib.Path, help="one backbone's records each")
    args = p.parse_args(argv)
    for d in args.dirs:
        if not d.is_dir():
            p.error(f"{d} is not a directory of backbone records (launch/backbone_candidate.sh).")
    print(table(args.dirs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
