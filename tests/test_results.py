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


# ----------------------------------------------------------------------------- object stores
# The bucket layout (one object per append call under results.jsonl.d/), exercised on a local
# folder with sharded=True: the same code runs for gs://, where it is the default.
def test_sharded_appends_write_one_object_per_call_and_read_back_in_order(tmp_path):
    rounds = [[{"step": s, "domain": d} for d in "ab"] for s in (-1, 10, 20, 100)]
    for rows in rounds:
        results.append_rows(tmp_path, rows, sharded=True)
    names = [p.name for p in results.round_files(tmp_path)]
    assert [n[:9] for n in names] == ["00000000-", "00000001-", "00000002-", "00000003-"]
    assert sorted((tmp_path / results.ROUNDS).iterdir()) == [
        tmp_path / results.ROUNDS / n for n in names
    ]
    assert not (tmp_path / results.RESULTS).exists()
    expected = [r for rows in rounds for r in rows]
    assert results.read_rows(tmp_path) == expected
    assert results.read_rows(str(tmp_path / results.RESULTS)) == expected  # The file's name too.
    assert results.has_results(tmp_path) and not results.has_results(tmp_path / "nothing")


def test_rows_of_results_jsonl_come_before_the_round_objects(tmp_path):
    results.append_rows(tmp_path, [{"step": 0}])  # A local run copied to the bucket...
    results.append_rows(tmp_path, [{"step": 5}], sharded=True)  # ...resumed there.
    assert results.read_rows(tmp_path) == [{"step": 0}, {"step": 5}]


def test_sharded_truncate_deletes_later_rounds_and_rewrites_a_mixed_one(tmp_path):
    results.append_rows(tmp_path, [{"step": 0}, {"step": 10}], sharded=True)
    results.append_rows(tmp_path, [{"step": 10}, {"step": 20}], sharded=True)  # Mixed.
    results.append_rows(tmp_path, [{"step": 30}], sharded=True)
    first, mixed, _ = results.round_files(tmp_path)
    assert results.truncate_after(tmp_path, 10) == 2
    assert results.round_files(tmp_path) == [first, mixed]  # Same names, same order.
    assert mixed.read_text() == '{"step": 10}\n'
    assert [r["step"] for r in results.read_rows(tmp_path)] == [0, 10, 10]
    results.append_rows(tmp_path, [{"step": 20}], sharded=True)  # The resumed run goes on.
    assert results.round_files(tmp_path)[-1].name.startswith("00000002-")
    assert results.truncate_after(tmp_path, -2) == 4 and results.round_files(tmp_path) == []


def test_sharded_round_objects_skip_bad_lines_and_leave_no_temporaries(tmp_path):
    results.append_rows(tmp_path, [{"step": 1}], sharded=True)
    stray = tmp_path / results.ROUNDS / "00000001-ffff.jsonl"
    stray.write_text('{"step": 2}\n{"step": 3, "acc')  # Not ours, cut short: still read.
    (tmp_path / results.ROUNDS / "notes.txt").write_text("ignored")
    assert results.read_rows(tmp_path) == [{"step": 1}, {"step": 2}]
    results.append_rows(tmp_path, [{"step": 4}], sharded=True)
    assert [p.name[:8] for p in results.round_files(tmp_path)] == [
        "00000000",
        "00000001",
        "00000002",
    ]
    assert not list((tmp_path / results.ROUNDS).glob("*.tmp"))


def test_write_json_atomic_takes_str_and_paths(tmp_path):
    results.write_json_atomic(str(tmp_path / results.SUMMARY), {"b": 1, "a": [2]})
    assert json.loads((tmp_path / results.SUMMARY).read_text()) == {"a": [2], "b": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [results.SUMMARY]
