"""Soups, interpolation and vmapped ensembles as pytree operations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax.methods import weight_space as ws


def tree(v):
    return {"backbone": {"w": jnp.full((2, 3), float(v))}, "head": {"b": jnp.full((3,), -float(v))}}


def test_uniform_soup_and_interpolation_endpoints():
    soup = ws.uniform_soup([tree(1), tree(2), tree(6)])
    np.testing.assert_allclose(soup["backbone"]["w"], 3.0)
    np.testing.assert_allclose(soup["head"]["b"], -3.0)
    a, b = tree(1), tree(5)
    for alpha, expected in [(0.0, 1.0), (1.0, 5.0), (0.25, 2.0)]:
        np.testing.assert_allclose(ws.interpolate(a, b, alpha)["backbone"]["w"], expected)
    path = ws.wise_ft(a, b, [0.0, 0.5, 1.0])
    np.testing.assert_allclose([p["backbone"]["w"][0, 0] for p in path], [1.0, 3.0, 5.0])


def test_incompatible_trees_name_the_first_differing_path():
    bad = {"backbone": {"w": jnp.zeros((2, 4))}, "head": {"b": jnp.zeros(3)}}
    with pytest.raises(ValueError, match=r"\['backbone'\]\['w'\].*\(2, 3\).*\(2, 4\)"):
        ws.uniform_soup([tree(1), bad])
    missing = {"backbone": {"w": jnp.zeros((2, 3))}}
    with pytest.raises(ValueError, match=r"\['head'\]\['b'\] is missing"):
        ws.stack([tree(1), missing])
    # The same question as a yes / no (the eval round stacks only trees that say yes).
    assert ws.stackable([tree(1), tree(2), tree(3)])
    assert not ws.stackable([tree(1), bad]) and not ws.stackable([tree(1), missing])
    assert not ws.stackable([tree(1), jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree(1))])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("strict", [True, False])
def test_greedy_soup_never_scores_below_its_best_ingredient(seed, strict):
    rng = np.random.default_rng(seed)
    trees = [tree(v) for v in rng.normal(0, 5, size=6)]
    freqs = rng.uniform(0.2, 2.0, size=3)  # A bumpy held-out score of the weights.
    evaluate = lambda t: float(np.sin(freqs * float(t["backbone"]["w"][0, 0])).sum())  # noqa: E731
    scores = [evaluate(t) for t in trees]
    soup, kept = ws.greedy_soup(trees, scores, evaluate, strict=strict)
    assert evaluate(soup) >= max(scores)
    assert kept[0] == int(np.argmax(scores))
    mean = np.mean([float(trees[i]["backbone"]["w"][0, 0]) for i in kept])
    np.testing.assert_allclose(soup["backbone"]["w"], mean, rtol=1e-5)  # Uniform over kept.


def test_greedy_soup_strict_and_ties():
    trees = [tree(0), tree(10), tree(4)]
    # Held-out score: closer to 6 is better; the ingredients' own scores are -6, -4, -2.
    evaluate = lambda t: -abs(float(t["backbone"]["w"][0, 0]) - 6.0)  # noqa: E731
    soup, kept = ws.greedy_soup(trees, [evaluate(t) for t in trees], evaluate)
    # Start from 4 (-2); adding 10 gives 7 (-1 > -2): kept; adding 0 gives 14/3 (-1.33): not.
    assert kept == [2, 1]
    np.testing.assert_allclose(soup["backbone"]["w"], 7.0)
    # Ties: an ingredient that leaves the score unchanged is kept only when strict=False.
    flat = lambda t: 0.0  # noqa: E731
    assert ws.greedy_soup(trees, [0.0, 0.0, 0.0], flat, strict=True)[1] == [0]
    assert ws.greedy_soup(trees, [0.0, 0.0, 0.0], flat, strict=False)[1] == [0, 1, 2]


def test_vmapped_ensemble_equals_per_model_loop():
    keys = jax.random.split(jax.random.key(0), 3)
    models = [{"w": jax.random.normal(k, (5, 4))} for k in keys]
    x = jax.random.normal(jax.random.key(1), (7, 5))
    apply = lambda p, x: x @ p["w"]  # noqa: E731
    stacked = ws.stack(models)
    summed = ws.ensemble_logits(apply, stacked, x, "sum_logits")
    np.testing.assert_allclose(summed, sum(apply(m, x) for m in models), rtol=1e-5)
    probs = ws.ensemble_logits(apply, stacked, x, "mean_probs")
    expected = np.mean([jax.nn.softmax(apply(m, x)) for m in models], 0)
    np.testing.assert_allclose(np.exp(probs), expected, rtol=1e-5)
    for per_pass in (1, 2):  # lax.map over chunks of models: the same ensemble.
        chunked = ws.ensemble_logits(apply, stacked, x, "sum_logits", per_pass)
        np.testing.assert_allclose(chunked, summed, rtol=1e-5)
    with pytest.raises(ValueError, match="Unknown ensemble"):
        ws.ensemble_logits(apply, stacked, x, "vote")


def test_models_per_pass_is_the_request_or_one_at_a_time_on_a_cpu(monkeypatch):
    """0 asks the backend's choice: one model at a time on a CPU (grouped convolutions are slow
    there), all at once (None) on an accelerator; any N is kept."""
    assert jax.default_backend() == "cpu"
    assert ws.models_per_pass(0) == 1
    assert [ws.models_per_pass(n) for n in (1, 2, 5)] == [1, 2, 5]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert ws.models_per_pass(0) is None
    assert ws.models_per_pass(3) == 3


def test_stack_and_copy_give_the_eager_values_and_copies_are_never_aliases():
    """`stack` (one compiled program) and `copy_tree` (a transfer) give what the eager tree
    maps give; the copy is never an alias, so it can be donated beside the original."""
    trees = [{"a": {"w": np.full((3, 2), i, np.float32)}, "b": np.arange(4) + i} for i in range(3)]
    stacked = ws.stack(trees)
    np.testing.assert_array_equal(stacked["a"]["w"], np.stack([t["a"]["w"] for t in trees]))
    np.testing.assert_array_equal(stacked["b"], np.stack([t["b"] for t in trees]))
    assert stacked["b"].dtype == jnp.asarray(trees[0]["b"]).dtype
    with pytest.raises(ValueError, match=r"parameter \['b'\] has shape"):
        ws.stack([trees[0], {**trees[1], "b": np.arange(5)}])
    original = jax.tree.map(jnp.asarray, trees[0])
    copied = ws.copy_tree(original)
    for x, y in zip(jax.tree.leaves(original), jax.tree.leaves(copied), strict=True):
        np.testing.assert_array_equal(x, y)
        assert x.unsafe_buffer_pointer() != y.unsafe_buffer_pointer()
    # Donating the copy leaves the original intact (an alias would be deleted with it).
    jax.jit(lambda t: jax.tree.map(lambda x: x + 1, t), donate_argnums=0)(copied)
    np.testing.assert_array_equal(original["a"]["w"], trees[0]["a"]["w"])
