"""Linear fine-tuning (Zhang & Bottou): a compact linear approximation of fine-tuning.

    y = V · Σ_i v_i ⊙ φ_i(x; θ0) + b

trained on φ_i, the pooled and standardised outputs of the frozen pretrained network's last
blocks (the paper: the three blocks of ResNet-50's last stage), with dropout on the
representation Σ_i v_i ⊙ φ_i, under the DomainBed protocol: trained on the training domains'
in splits, evaluated on every split, the step selected by training-domain validation.

The features are extracted once (no augmentation), so training is a few seconds of matmuls.
The demo's SmallResNet has one block per stage and blocks of different widths (stage3: 64,
stage4: 128, widened penultimate layer: 512), so Σ_i is replaced by the concatenation of the
v_i ⊙ φ_i (V then has one slice per block) when widths differ; with equal widths it is the
paper's sum. Sites are names sown by the backbone (`intermediates`) or "features" (the
penultimate features).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from richft_jax import parallel, results, steps
from richft_jax.data import pipeline, pixels
from richft_jax.methods.feature_dropout import feature_dropout

DEFAULT_SITES = ("stage3_block1_pooled", "stage4_block1_pooled", "features")


def site_outputs(model, variables: dict, images: jax.Array, sites: Sequence[str]) -> dict:
    """{site: [N, d] pooled output} of a frozen classifier in eval mode (sown intermediates)."""
    (_, aux), state = model.apply(variables, images, train=False, mutable=["intermediates"])
    sown = state.get("intermediates", {}).get("backbone", {})
    out = {}
    for site in sites:
        if site == "features":
            out[site] = aux["features"]
        elif site in sown:
            out[site] = sown[site][0]
        else:
            raise ValueError(
                f"linear fine-tuning: site {site!r} is not an output of the backbone; it sows "
                f"{sorted(sown)} (and 'features' is the penultimate representation)."
            )
    return out


@steps.jit_per_model
def site_fn(
    model, sites: tuple[str, ...], normalize: str
) -> Callable[[dict, jax.Array], dict[str, jax.Array]]:
    """The jitted `(variables, uint8 images) -> {site: features}` of one architecture."""
    return lambda v, x: site_outputs(model, v, pixels.normalize(x, normalize), sites)


def extract(
    model,
    variables: dict,
    data: pipeline.DomainData,
    sites: Sequence[str],
    normalize: str,
    batch_size: int,
    mesh,
    max_examples: int | None = None,
) -> list[dict]:
    """Per split, {"split": Split, "features": {site: [n, d]}, "labels": [n]} (host numpy)."""
    fn = site_fn(model, tuple(sites), normalize)
    out = []
    for split in data.splits:
        feats, labels = {s: [] for s in sites}, []
        for batch in pipeline.eval_batches(split, batch_size, max_examples):
            f = jax.device_get(fn(variables, parallel.global_batch(batch, mesh)["image"]))
            for s in sites:
                feats[s].append(np.asarray(f[s])[batch["mask"]])
            labels.append(batch["label"][batch["mask"]])
        out.append(
            {
                "split": split,
                "features": {s: np.concatenate(v) for s, v in feats.items()},
                "labels": np.concatenate(labels),
            }
        )
    return out


def standardizer(train_parts: Sequence[dict]) -> dict:
    """{site: (mean, std)} over the training examples: the "normalised" of the paper."""
    sites = train_parts[0]["features"]
    stats = {}
    for s in sites:
        x = np.concatenate([p["features"][s] for p in train_parts])
        stats[s] = (x.mean(0), x.std(0) + 1e-6)
    return stats


def representation(params: dict, feats: dict, combine: str) -> jax.Array:
    """Σ_i v_i ⊙ φ_i ("sum", equal widths) or the concatenation of the v_i ⊙ φ_i ("concat")."""
    scaled = [params["v"][s] * feats[s] for s in sorted(feats)]
    return sum(scaled[1:], scaled[0]) if combine == "sum" else jnp.concatenate(scaled, -1)


def logits(params: dict, feats: dict, combine: str) -> jax.Array:
    """y = V · representation + b (no dropout: evaluation)."""
    return representation(params, feats, combine) @ params["V"] + params["b"]


def init_params(widths: dict, num_classes: int, combine: str) -> dict:
    """v_i = 1 (each block's features as they are), V = 0 and b = 0 (a zero-initialised head)."""
    dim = next(iter(widths.values())) if combine == "sum" else sum(widths.values())
    return {
        "v": {s: jnp.ones((d,), jnp.float32) for s, d in widths.items()},
        "V": jnp.zeros((dim, num_classes), jnp.float32),
        "b": jnp.zeros((num_classes,), jnp.float32),
    }


def choose_combine(widths: dict, combine: str = "auto") -> str:
    """ "sum" when all sites have one width (the paper), else "concat"; a clear error otherwise."""
    if combine == "auto":
        return "sum" if len(set(widths.values())) == 1 else "concat"
    if combine == "sum" and len(set(widths.values())) != 1:
        raise ValueError(f"linear fine-tuning: combine='sum' needs equal widths, got {widths}.")
    if combine not in ("sum", "concat"):
        raise ValueError(f"linear fine-tuning: combine={combine!r} is not auto | sum | concat.")
    return combine


def train_linear_finetune(
    parts: list[dict],
    num_classes: int,
    *,
    dropout_rate: float = 0.0,
    num_steps: int = 2000,
    eval_every: int = 200,
    batch_size_per_domain: int = 32,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-3,
    seed: int = 0,
    combine: str = "auto",
) -> dict:
    """Trains the linear fine-tuning model on the training domains' in splits of `parts` (from
    `extract`) with SGD (momentum, coupled weight decay) and feature dropout; evaluates every
    split every `eval_every` steps. Returns the result rows (results.jsonl's format, method
    "linear_finetune"), the training-domain-validation selection, and the final parameters."""
    train_parts = [p for p in parts if p["split"].split == "in" and not p["split"].is_test_domain]
    if not train_parts:
        raise ValueError("linear fine-tuning: no training-domain 'in' split to train on.")
    stats = standardizer(train_parts)
    norm = lambda f: {s: jnp.asarray((x - stats[s][0]) / stats[s][1]) for s, x in f.items()}  # noqa: E731
    widths = {s: x.shape[-1] for s, x in train_parts[0]["features"].items()}
    combine = choose_combine(widths, combine)
    train_feats = [norm(p["features"]) for p in train_parts]
    train_labels = [jnp.asarray(p["labels"]) for p in train_parts]
    eval_feats = [(p["split"], norm(p["features"]), jnp.asarray(p["labels"])) for p in parts]

    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum))
    params = init_params(widths, num_classes, combine)
    opt_state = tx.init(params)
    root = jax.random.key(seed)

    def loss_fn(p, feats, labels, key):
        rep = feature_dropout(representation(p, feats, combine), dropout_rate, key)
        out = rep @ p["V"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

    def step(carry, i):
        p, o = carry
        key = jax.random.fold_in(root, i)
        feats, labels = {s: [] for s in widths}, []
        # One batch per training domain, sampled with replacement (the paper's protocol).
        for d, (f, y) in enumerate(zip(train_feats, train_labels, strict=True)):
            k = jax.random.fold_in(key, d)
            idx = jax.random.randint(k, (batch_size_per_domain,), 0, len(y))
            for s in widths:
                feats[s].append(f[s][idx])
            labels.append(y[idx])
        feats = {s: jnp.concatenate(v) for s, v in feats.items()}
        loss, grads = jax.value_and_grad(loss_fn)(
            p, feats, jnp.concatenate(labels), jax.random.fold_in(key, len(train_feats))
        )
        updates, o = tx.update(grads, o, p)
        return (optax.apply_updates(p, updates), o), loss

    @jax.jit
    def run_chunk(p, o, start):
        (p, o), losses = jax.lax.scan(step, (p, o), start + jnp.arange(eval_every))
        return p, o, losses.mean()

    @jax.jit
    def accuracy(p, feats, labels):
        out = logits(p, feats, combine)
        ce = optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()
        return jnp.mean(jnp.argmax(out, -1) == labels), ce

    rows, losses = [], []
    for start in range(0, num_steps, eval_every):
        params, opt_state, loss = run_chunk(params, opt_state, start)
        losses.append(float(loss))
        for split, feats, labels in eval_feats:
            acc, ce = accuracy(params, feats, labels)
            rows.append(
                {
                    "step": start + eval_every,
                    "method": "linear_finetune",
                    "domain": split.domain,
                    "split": split.split,
                    "is_test_domain": split.is_test_domain,
                    "accuracy": float(acc),
                    "loss": float(ce),
                    "num_examples": len(labels),
                    "dropout_rate": float(dropout_rate),
                }
            )
    selection = results.select_training_domain_validation(rows, "linear_finetune")
    return {
        "rows": rows,
        "selection": selection,
        "train_loss": losses,
        "combine": combine,
        "widths": widths,
        "params": jax.device_get(params),
    }
