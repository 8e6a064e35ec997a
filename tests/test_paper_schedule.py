"""The paper configs run trainv2.py's schedule exactly (`python -m domainbed.scripts.trainv2
--steps 10001`): a dry run of the schedule, update by update, against that script's logic
written out here; then a tiny real run with "domainbed" step labels, and its resume."""

import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from richft_jax import checkpoints, config_lib, evaluation, parallel, results, run, schedule, train
from richft_jax import steps as steps_lib
from richft_jax.methods import moving_average

PAPER = ("resnet50_dropout", "resnet50_erm", "vit_b16_dropout", "vit_b16_erm")


# ----------------------------------------------------------------------------- trainv2's logic
def trainv2_schedule(n_steps, checkpoint_freq, lr, milestones, gamma=0.1):
    """(evaluated `step`s, lr of each update) of trainv2.py's loop: `for step in
    range(n_steps)`: algorithm.update (optimizer.step(), then MultiStepLR.step()), then an
    evaluation record labelled `step` if step % checkpoint_freq == 0 or step == n_steps - 1.
    MultiStepLR's rate after k scheduler steps is lr * gamma ** #{milestones <= k}."""
    evaluated, lrs, scheduler_steps = [], [], 0
    for step in range(n_steps):
        lrs.append(lr * gamma ** sum(m <= scheduler_steps for m in milestones))
        scheduler_steps += 1
        if step % checkpoint_freq == 0 or step == n_steps - 1:
            evaluated.append(step)
    return evaluated, np.asarray(lrs)


def trainv2_swa(n_steps, ma_start_iter):
    """The SWA weights after each update when the weights after update k are the number k:
    SWA.update copies the network while global_iter - 1 < ma_start_iter, then keeps the running
    mean (ma * ma_count + new) / (1 + ma_count), global_iter counting its calls from 0."""
    out, global_iter, ma, ma_count = [], 0, None, 0
    for k in range(1, n_steps + 1):
        if global_iter - 1 >= ma_start_iter:
            ma_count += 1
            ma = (ma * ma_count + k) / (1.0 + ma_count)
        else:
            ma = float(k)
        global_iter += 1
        out.append(ma)
    return np.asarray(out)


PAPER_RUNS = {  # dataset: (--steps, checkpoint_freq, lr, milestones) of trainv2.py.
    "pacs": (10001, 300, 1e-3, [5000, 10000]),  # The README's command, DomainBed's PACS.
    "domainnet": (30001, 1000, 3e-3, [15000, 25000]),  # DomainNet.CHECKPOINT_FREQ = 1000.
}


# ----------------------------------------------------------------------------- the dry run
@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("dataset", sorted(PAPER_RUNS))
def test_evaluation_labels_and_learning_rates_match_trainv2(name, dataset):
    c = config_lib.load_config_file(name, f"dataset={dataset}")
    n_steps, freq, lr, milestones = PAPER_RUNS[dataset]
    evaluated, lrs = trainv2_schedule(n_steps, freq, lr, milestones)
    assert c.num_steps == n_steps and c.step_labels == "domainbed"
    assert schedule.eval_labels(c) == evaluated
    if dataset == "pacs":
        assert evaluated[:3] == [0, 300, 600] and evaluated[-2:] == [9900, 10000]
    # The loop's own questions, update by update (u = updates done = trainv2's step + 1).
    for u in range(1, c.num_steps + 1):
        assert schedule.is_eval_step(c, u) == (u - 1 in evaluated), u
        assert schedule.is_checkpoint_step(c, u) == (u - 1 in evaluated), u
        assert schedule.updates(c, schedule.label(c, u)) == u
    # Update u + 1 (0-based index u) runs at schedule(u): trainv2's rate of its step u.
    ours = np.asarray(steps_lib.make_schedule(c.optim, c.num_steps)(jnp.arange(c.num_steps)))
    np.testing.assert_allclose(ours, lrs, rtol=1e-6)
    assert lrs[milestones[0] - 1] == lr and lrs[milestones[0]] == pytest.approx(lr / 10)


def test_the_optimizer_applies_that_rate_at_each_update():
    """Plain SGD on a constant gradient of 1: each update moves the weights by its rate."""
    c = config_lib.load_config_file("resnet50_dropout")
    c.optim.momentum, c.optim.weight_decay = 0.0, 0.0
    tx = steps_lib.make_optimizer(c.optim)
    params = {"backbone": jnp.zeros(()), "head": jnp.zeros(())}
    ones = jax.tree.map(jnp.ones_like, params)

    def update(carry, learning_rate):
        p, s = carry
        delta, s = tx.update(ones, s, p, learning_rate=learning_rate)
        return (optax.apply_updates(p, delta), s), -delta["backbone"]

    lrs_of_the_loop = steps_lib.learning_rates(c.optim, c.num_steps)  # What train.py passes.
    _, moved = jax.lax.scan(update, (params, tx.init(params)), lrs_of_the_loop)
    _, lrs = trainv2_schedule(10001, 300, 1e-3, [5000, 10000])
    np.testing.assert_allclose(np.asarray(moved), lrs, rtol=1e-6)
    assert float(moved[-1]) == pytest.approx(1e-5)  # The 10,001st update: x0.01.


def test_moving_average_and_along_run_ensemble_start_where_trainv2_starts():
    c = config_lib.load_config_file("resnet50_dropout")
    start = c.moving_average_start
    assert start == 301 and c.along_run_start == 300
    # Our running average of the weights "k" after each update, against trainv2's SWA.
    k = jnp.arange(1, c.num_steps + 1, dtype=jnp.float32)
    _, ours = jax.lax.scan(
        lambda avg, u: (moving_average.update(avg, u, u.astype(jnp.int32), start),) * 2,
        jnp.zeros(()),
        k,
    )
    np.testing.assert_allclose(np.asarray(ours), trainv2_swa(c.num_steps, 300), rtol=1e-5)
    # Evaluated (rows "+moving_average") at the labels trainv2 evaluates its SWA: step >= 300.
    hook = moving_average.method(c)
    evaluated, _ = trainv2_schedule(10001, 300, 1e-3, [5000, 10000])
    with_ma = [s for s in schedule.eval_labels(c) if hook.eval_weights(0.0, schedule.updates(c, s))]
    assert with_ma == [s for s in evaluated if s >= 300]
    # trainv2's ensemble sums the logits of the models evaluated at step >= ma_start_iter: the
    # checkpoints (saved at every evaluation) the along-run combinations take.
    saved = [schedule.label(c, u) for u in range(1, 10002) if schedule.is_checkpoint_step(c, u)]
    assert schedule.along_run_steps(c, saved) == [s for s in evaluated if s >= 300]


def test_other_configs_keep_their_schedule():
    base = config_lib.base_config()
    assert base.step_labels == "updates" and base.data.eval_augment == "none"
    assert schedule.eval_labels(base) == list(range(300, 10_000, 300)) + [10_000]
    demo = config_lib.load_config_file("demo")
    assert schedule.eval_labels(demo) == [150, 300, 450, 600, 750, 900]
    assert schedule.label(demo, 150) == 150 and not schedule.is_eval_step(demo, 1)
    assert schedule.along_run_steps(demo, [150, 300]) == [150, 300]
    lr = steps_lib.make_schedule(demo.optim, demo.num_steps)
    assert float(lr(449)) == pytest.approx(3e-3) and float(lr(450)) == pytest.approx(3e-4)
    with pytest.raises(ValueError, match="step_labels='dombed'"):
        schedule.validate(ml_collections.ConfigDict({"step_labels": "dombed"}))


# ----------------------------------------------------------------------------- a tiny real run
@pytest.fixture(scope="module")
def domainbed_run(tmp_path_factory, data_dir):
    """The tiny demo with "domainbed" labels: 12 updates, every 5, evaluated augmented."""
    root = tmp_path_factory.mktemp("paper_schedule")
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    c.pretrained.path = ""  # A random backbone: the schedule needs no pretraining.
    c.step_labels, c.num_steps = "domainbed", 12
    c.eval_every = c.checkpoint_every = c.log_every = 5
    c.moving_average_start = schedule.updates(c, 5)
    c.data.eval_augment = "training_domains"
    summary = train.train_and_evaluate(c, str(root / "run"))
    return c, root, summary


def test_results_checkpoints_and_selection_carry_the_labels(domainbed_run):
    c, root, summary = domainbed_run
    workdir = root / "run"
    rows = results.read_rows(workdir)
    assert schedule.eval_labels(c) == [0, 5, 10, 11]
    model = [r["step"] for r in rows if r["method"] == "very_large_dropout"]
    assert sorted(set(model)) == [0, 5, 10, 11] and len(model) == 4 * 8
    ma = {r["step"] for r in rows if r["method"] == "very_large_dropout+moving_average"}
    assert ma == {5, 10, 11}  # From label 5: updates 6 on.
    saved = checkpoints.ocp.utils.checkpoint_steps(workdir / checkpoints.LATEST)
    assert sorted(saved) == [0, 5, 10, 11]
    for s in saved:  # The directory has the label; the state the updates done.
        tree = checkpoints.restore_state_tree(workdir / checkpoints.LATEST / str(s))
        assert int(tree["step"]) == s + 1
    selected = summary["selected"]["step"]
    assert selected in (0, 5, 10, 11)
    assert checkpoints.ocp.utils.checkpoint_steps(workdir / checkpoints.BEST) == [selected]


def test_the_loop_evaluates_the_training_domains_augmented(domainbed_run):
    """The last rows again from checkpoints/11: training domains through the augmentation of
    label 11, the test domain unaugmented."""
    c, root, _ = domainbed_run
    r = run.from_workdir(str(root / "run" / checkpoints.LATEST / "11"))
    eval_step = jax.jit(steps_lib.make_eval_step(steps_lib.model_logits(r.model), c.data.normalize))
    mesh = parallel.make_mesh()

    def evaluate(augment):
        evals = evaluation.evaluate(
            eval_step,
            r.variables,
            r.data,
            c.data.eval_batch_size,
            mesh,
            c.data.eval_max_examples,
            augment,
            c.data.eval_train_in_max_examples,
        )
        return {(s.domain, s.split): m for s, m in evals}

    plain, aug = evaluate(("none", 0)), evaluate(evaluation.eval_augmentation(c, 11))
    rows = results.read_rows(root / "run")
    logged = {
        (x["domain"], x["split"]): x
        for x in rows
        if x["step"] == 11 and x["method"] == "very_large_dropout"
    }
    for key, row in logged.items():
        want = plain[key] if row["is_test_domain"] else aug[key]
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-5), key
        assert row["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6), key
    assert any(aug[k]["loss"] != plain[k]["loss"] for k in logged if k[0] != "syn")


def test_resume_in_domainbed_labels_gives_the_same_rows(domainbed_run):
    """A copy of the run cut back to its checkpoint of label 5 (6 updates) resumes to the
    same results: rows after label 5 dropped and recomputed, none duplicated."""
    c, root, _ = domainbed_run
    cut = root / "cut"
    shutil.copytree(root / "run", cut)
    for s in ("10", "11"):
        shutil.rmtree(cut / checkpoints.LATEST / s)
    (cut / results.SUMMARY).unlink()
    train.train_and_evaluate(c, str(cut))
    key = lambda r: (r["step"], r["method"], r["domain"], r["split"], r["accuracy"], r["loss"])  # noqa: E731
    assert [key(r) for r in results.read_rows(cut)] == [
        key(r) for r in results.read_rows(root / "run")
    ]
