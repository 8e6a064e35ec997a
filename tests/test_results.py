"""results.jsonl: whole-line appends, truncated last lines skipped, resume truncation."""

import json

from absl import logging

from richft_jax import results


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path, monkeypatch):
    rows = [{"step": 1, "accuracy": 0.5}, {"step": 2, "accuracy": 0.6}]
    results.append_rows(str(tmp_path), rows)
    with open(tmp_path / results.RESULTS, "a") as f:
        f.write('{"step": 3, "accur')  # A write cut short by a crash.
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda *a: warnings.append(a))
    assert results.read_rows(tmp_path) == rows
    assert warnings and ":3" in (warnings[0][0] % warnings[0][1:])


def test_truncate_after_keeps_rows_up_to_the_step(tmp_path):
    results.append_rows(str(tmp_path), [{"step": s} for s in (0, 10, 20, 30)])
    assert results.truncate_after(str(tmp_path), 20) == 1
    assert [r["step"] for r in results.read_rows(tmp_path)] == [0, 10, 20]
    text = (tmp_path / results.RESULTS).read_text()
    assert all(json.loads(line) for line in text.splitlines())


def test_training_domain_validation_picks_the_best_id_step_earliest_on_ties():
    def rows(step, id_acc, ood):
        base = {"step": step, "method": "m"}
        return [
            {**base, "is_test_domain": False, "split": "out", "accuracy": id_acc},
            {**base, "is_test_domain": True, "split": "in", "accuracy": ood},
        ]

    all_rows = rows(1, 0.8, 0.1) + rows(2, 0.9, 0.2) + rows(3, 0.9, 0.3)
    selected = results.select_training_domain_validation(all_rows)["selected"]
    assert selected["step"] == 2 and selected["ood_accuracy"] == 0.2
