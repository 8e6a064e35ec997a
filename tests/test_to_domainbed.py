"""launch/to_domainbed.py: our records as DomainBed's (the keys its reporting.load_records,
model_selection and collect_results read), on runs written here with values checked by hand,
including the hparams_seed order that makes DomainBed's tie rule pick the run the report picks.
Needs no DomainBed code."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from richft_jax import report

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("to_domainbed", REPO / "launch" / "to_domainbed.py")
to_domainbed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(to_domainbed)

DOMAINS = ("p", "q", "r")  # As the rows list them: DomainBed's env0, env1, env2.


def rows(method: str, test: str, seed: int, steps: dict) -> list[dict]:
    """Our rows: steps {step: {(domain, split): accuracy}}, written in the given step order."""
    out = []
    for step, accs in steps.items():
        for domain in DOMAINS:
            for split in ("in", "out"):
                out.append(
                    {
                        "accuracy": accs[(domain, split)],
                        "dataset": "toy",
                        "domain": domain,
                        "is_test_domain": domain == test,
                        "loss": 1.0,
                        "method": method,
                        "seed": seed,
                        "split": split,
                        "step": step,
                        "test_domains": [test],
                        "trial_seed": seed,
                    }
                )
    return out


def accs(val: tuple[float, float], test_in: float, test_out: float, test: str = "q") -> dict:
    """{(domain, split): accuracy}: the training domains' out splits `val` (in domain order),
    their in splits 0.9, the test domain's in and out splits."""
    train = iter(val)
    return {
        (d, s): (test_in if s == "in" else test_out)
        if d == test
        else (next(train) if s == "out" else 0.9)
        for d in DOMAINS
        for s in ("in", "out")
    }


def write(run_dir: pathlib.Path, lines: list[dict], config: dict | None = None) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if config is not None:
        (run_dir / "config.json").write_text(json.dumps(config))


@pytest.fixture
def runs(tmp_path) -> pathlib.Path:
    """Two hyper-parameter settings (s0, s1, read in that order) of method "m" with test
    domain q and trial seed 0, tied in validation score (0.75 at their best step) and in the
    oracle's (test out 0.6 at the last step); s1's file also logs "m+avg"; one s0 run with
    trial seed 1 (a group of its own). Steps are written 20 before 10."""
    root = tmp_path / "ours"
    s0 = {20: accs((0.7, 0.8), 0.41, 0.6), 10: accs((0.5, 0.5), 0.30, 0.5)}
    s1 = {20: accs((0.75, 0.75), 0.47, 0.6), 10: accs((0.6, 0.6), 0.35, 0.5)}
    avg = {10: accs((0.6, 0.65), 0.33, 0.4)}
    write(root / "s0" / "seed0", rows("m", "q", 0, s0), {"optim": {"lr": 0.001}})
    write(root / "s1" / "seed0", rows("m", "q", 0, s1) + rows("m+avg", "q", 0, avg))
    write(root / "s0" / "seed1", rows("m", "q", 1, s1), {"optim": {"lr": 0.001}})
    return root


def read(run_dir: pathlib.Path) -> list[dict]:
    text = (run_dir / "results.jsonl").read_text()
    assert text.endswith("\n")  # load_records drops each line's last character.
    return [json.loads(line[:-1]) for line in text.splitlines(keepends=True)]


def test_records_have_domainbeds_keys_and_values(runs, tmp_path):
    out = tmp_path / "db"
    written = to_domainbed.convert([str(runs)], str(out))
    # Reading order: s0/seed0, s0/seed1, s1/seed0 (m, then m+avg).
    assert [p.name for p in written] == [
        "0000_m_q_trial0_hp0",
        "0001_m_q_trial1_hp0",
        "0002_m_q_trial0_hp1",
        "0003_m+avg_q_trial0_hp0",
    ]
    assert json.loads((out / "environments.json").read_text()) == {"toy": ["p", "q", "r"]}
    assert all((p / "done").exists() for p in written)

    first = read(written[0])
    args = {
        "algorithm": "m",
        "dataset": "toy",
        "hparams_seed": 0,
        "output_dir": str(runs / "s0" / "seed0"),
        "seed": 0,
        "test_envs": [1],
        "trial_seed": 0,
    }
    hparams = {"optim": {"lr": 0.001}}
    assert first == [  # Ascending steps; env1 = q, the test domain.
        {"args": args, "hparams": hparams, "step": 10, "env0_in_acc": 0.9, "env0_out_acc": 0.5,
         "env1_in_acc": 0.30, "env1_out_acc": 0.5, "env2_in_acc": 0.9, "env2_out_acc": 0.5},
        {"args": args, "hparams": hparams, "step": 20, "env0_in_acc": 0.9, "env0_out_acc": 0.7,
         "env1_in_acc": 0.41, "env1_out_acc": 0.6, "env2_in_acc": 0.9, "env2_out_acc": 0.8},
    ]  # fmt: skip
    tied = read(written[2])
    assert tied[1]["args"] == {
        **args,
        "hparams_seed": 1,
        "output_dir": str(runs / "s1" / "seed0"),
    }
    assert tied[1]["hparams"] == {}  # No config.json.
    assert (tied[1]["env0_out_acc"], tied[1]["env1_in_acc"], tied[1]["env2_out_acc"]) == (
        0.75,
        0.47,
        0.75,
    )
    assert read(written[1])[0]["args"]["trial_seed"] == 1
    assert read(written[3]) == [
        {
            "args": {**args, "algorithm": "m+avg", "output_dir": str(runs / "s1" / "seed0")},
            "hparams": {},
            "step": 10,
            **{f"env{i}_in_acc": a for i, a in enumerate((0.9, 0.33, 0.9))},
            **{f"env{i}_out_acc": a for i, a in enumerate((0.6, 0.4, 0.65))},
        }
    ]


@pytest.mark.parametrize(
    "selection, val_key",
    [("training_domain_validation", "train_out"), ("oracle", "env1_out_acc")],
)
def test_tied_settings_domainbed_picks_the_reports_run(runs, tmp_path, selection, val_key):
    """Both settings score 0.75 (training-domain validation: (0.7 + 0.8) / 2 and
    (0.75 + 0.75) / 2, equal in floats) and 0.6 (oracle). DomainBed's hparams_accs: runs by
    ascending hparams_seed, stably sorted by score, reversed: the last, hparams_seed 1 = s1
    (test in 0.47), which the report picks (the last read)."""
    written = to_domainbed.convert([str(runs)], str(tmp_path / "db"))
    group = [read(p) for p in written if p.name.startswith(("0000_", "0002_"))]

    def run_acc(run: list[dict]) -> dict:  # DomainBed's run_acc, for this test's runs.
        if val_key == "env1_out_acc":
            last = sorted(run, key=lambda r: r["step"])[-1]
            return {"val": last["env1_out_acc"], "test": last["env1_in_acc"]}
        steps = [{"val": (r["env0_out_acc"] + r["env2_out_acc"]) / 2, "test": r["env1_in_acc"]}
                 for r in run]  # fmt: skip
        return max(steps, key=lambda s: s["val"])

    by_seed = sorted(group, key=lambda run: run[0]["args"]["hparams_seed"])
    accs_ = [run_acc(run) for run in by_seed]
    assert accs_[0]["val"] == accs_[1]["val"]  # The tie.
    assert sorted(accs_, key=lambda a: a["val"])[::-1][0]["test"] == 0.47
    cell = report.aggregate(report.run_records([str(runs)]), selection)[("toy", "m", "q")]
    assert cell["ood"] == [0.47, 0.47]  # Trial seeds 0 and 1.


def test_refuses_what_domainbed_would_read_differently(runs, tmp_path):
    out = tmp_path / "db"
    (out / "old_run").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not empty"):
        to_domainbed.convert([str(runs)], str(out))
    lines = rows("m", "q", 0, {10: accs((0.5, 0.5), 0.3, 0.5)})
    write(tmp_path / "missing" / "run", [r for r in lines if r["domain"] != "r"])
    write(tmp_path / "missing" / "other", lines)  # Lists domain r: the dataset has it.
    with pytest.raises(ValueError, match=r"step 10 lacks \['env2_in_acc', 'env2_out_acc'\]"):
        to_domainbed.convert([str(tmp_path / "missing")], str(tmp_path / "db2"))
    assert not (tmp_path / "db2").exists()  # Checked before anything is written.
    bad = [{**r, "is_test_domain": r["domain"] == "p"} for r in lines]
    write(tmp_path / "mismatch" / "run", bad)
    with pytest.raises(ValueError, match="is_test_domain disagrees"):
        to_domainbed.convert([str(tmp_path / "mismatch")], str(tmp_path / "db3"))


def test_training_domains_in_splits_not_evaluated_are_minus_one_as_trainv2(tmp_path):
    """Runs that skip the training domains' in splits (config.data.eval_train_in_max_examples=0,
    the paper configs) get -1 there, as trainv2.py records them; any other gap is refused."""
    lines = rows("m", "q", 0, {10: accs((0.5, 0.6), 0.3, 0.4)})
    kept = [r for r in lines if r["is_test_domain"] or r["split"] == "out"]
    assert len(kept) == 4  # p out, q in, q out, r out.
    write(tmp_path / "skipped" / "run", kept)
    (written,) = to_domainbed.convert([str(tmp_path / "skipped")], str(tmp_path / "db"))
    (record,) = read(written)
    assert {k: v for k, v in record.items() if k.startswith("env")} == {
        "env0_in_acc": -1.0, "env0_out_acc": 0.5, "env1_in_acc": 0.3, "env1_out_acc": 0.4,
        "env2_in_acc": -1.0, "env2_out_acc": 0.6,
    }  # fmt: skip
    no_out = [r for r in lines if not (r["domain"] == "p" and r["split"] == "out")]
    write(tmp_path / "gap" / "run", no_out)
    with pytest.raises(ValueError, match=r"step 10 lacks \['env0_out_acc'\]"):
        to_domainbed.convert([str(tmp_path / "gap")], str(tmp_path / "db2"))
    no_test_in = [r for r in kept if not (r["domain"] == "q" and r["split"] == "in")]
    write(tmp_path / "gap2" / "run", no_test_in)
    with pytest.raises(ValueError, match=r"step 10 lacks \['env1_in_acc'\]"):
        to_domainbed.convert([str(tmp_path / "gap2")], str(tmp_path / "db3"))


def test_a_method_at_several_dropout_rates_is_one_algorithm_per_rate(tmp_path):
    """The report names such a method once per rate; DomainBed gets those names, each a group
    of its own (hparams_seed 0), with the rows of the method as logged."""
    lines = rows("m", "q", 0, {10: accs((0.5, 0.5), 0.3, 0.5)})
    for rate in (0.5, 0.9):
        write(tmp_path / "ours" / f"rate{rate}", lines, {"dropout_rate": rate})
    written = to_domainbed.convert([str(tmp_path / "ours")], str(tmp_path / "db"))
    assert [p.name for p in written] == [
        "0000_m__p=0.5__q_trial0_hp0",
        "0001_m__p=0.9__q_trial0_hp0",
    ]
    assert [read(p)[0]["args"]["algorithm"] for p in written] == ["m (p=0.5)", "m (p=0.9)"]
    assert read(written[1])[0]["env1_in_acc"] == 0.3


def test_command_line(runs, tmp_path):
    out = tmp_path / "db"
    cmd = [sys.executable, str(REPO / "launch" / "to_domainbed.py"), str(runs), f"--out={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "Wrote 4 DomainBed runs" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode != 0 and "not empty" in again.stderr
