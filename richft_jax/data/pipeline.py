"""From prepared TFDS data to device batches, following the DomainBed protocol.

Domains are held in memory (the benchmarks here are small; DomainBed's large sets go
through the same functions with a per-host shard). A training batch is a pure
function of (seed, step): one batch of B images per training domain, drawn with
replacement from the domain's "in" split by stateless TF random ops, then
concatenated. So the data-iterator position is just the step, and a resumed run
replays exactly the batches of an uninterrupted one.
"""

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from richft_jax import tf_cpu
from richft_jax.data import augment, sources, splits
from richft_jax.data.catalog import parse_test_domains

tf = tf_cpu.tf()


@dataclasses.dataclass(frozen=True)
class Split:
    """One evaluation split: a domain's "in" or "out" part, held as numpy arrays."""

    domain: str
    split: str  # "in" | "out"
    is_test_domain: bool
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]


@dataclasses.dataclass(frozen=True)
class DomainData:
    """All domains of a dataset, split in/out by trial_seed, with the test domains marked."""

    name: str
    domains: tuple[str, ...]
    test_domains: tuple[str, ...]
    num_classes: int
    splits: tuple[Split, ...]

    @property
    def train_domains(self) -> tuple[str, ...]:
        return tuple(d for d in self.domains if d not in self.test_domains)

    def id_splits(self) -> tuple[Split, ...]:
        """In-distribution evaluation: the training domains' held-out ("out") splits."""
        return tuple(s for s in self.splits if not s.is_test_domain and s.split == "out")

    def ood_splits(self) -> tuple[Split, ...]:
        """Out-of-distribution evaluation: the test domains' "in" splits (DomainBed's test
        accuracy; the test domains' "out" splits are only for oracle selection)."""
        return tuple(s for s in self.splits if s.is_test_domain and s.split == "in")

    def with_splits(self, splits: Sequence[Split]) -> "DomainData":
        """The same dataset restricted to `splits` (e.g. held-out scoring of soups)."""
        return dataclasses.replace(self, splits=tuple(splits))

    def get(self, domain: str, split: str) -> Split:
        for s in self.splits:
            if s.domain == domain and s.split == split:
                return s
        raise KeyError(f"No split {domain}/{split} in {self.name}.")


def load_domains(
    name: str,
    test_domains: str | Sequence,
    trial_seed: int,
    holdout_fraction: float = 0.2,
    data_dir: str | None = None,
    image_size: int | None = None,
    manual_dir: str | None = None,
    skip_unreadable: bool = False,
) -> DomainData:
    """Loads every domain of `name` (images resized to `image_size`, see sources.load_arrays)
    and splits each 80/20 in/out as DomainBed does (or by its official splits, if it has them)."""
    domains = sources.domains_of(name)
    tests = parse_test_domains(test_domains, domains)
    num_classes = sources.num_classes_of(name)
    out = []
    if sources.has_official_splits(name):
        official = sources.load_official_splits(name, data_dir, image_size)
        for domain in domains:
            for split in ("in", "out"):
                images, labels = official[domain][split]
                out.append(Split(domain, split, domain in tests, images, labels))
        return DomainData(name, tuple(domains), tests, num_classes, tuple(out))
    arrays = sources.load_arrays(
        name,
        data_dir=data_dir,
        image_size=image_size,
        manual_dir=manual_dir,
        skip_unreadable=skip_unreadable,
    )
    for index, domain in enumerate(domains):
        images, labels = arrays[domain]
        if len(labels) == 0:
            raise ValueError(f"Dataset {name!r}: domain {domain!r} is empty.")
        in_idx, out_idx = splits.in_out_split(len(labels), trial_seed, index, holdout_fraction)
        if not (len(in_idx) and len(out_idx)):
            raise ValueError(
                f"Dataset {name!r}: domain {domain!r} has {len(labels)} examples, too few for "
                f"non-empty in/out splits with config.data.holdout_fraction={holdout_fraction}."
            )
        for split, idx in (("in", in_idx), ("out", out_idx)):
            out.append(
                Split(domain, split, domain in tests, images[idx], labels[idx].astype(np.int32))
            )
    return DomainData(name, tuple(domains), tests, num_classes, tuple(out))


def _augment(
    images: "tf.Tensor", kind: str, seed: "tf.Tensor", pad: int = 4, rows: tuple | None = None
) -> "tf.Tensor":
    """Per-example random pad-and-crop (and flip) with stateless ops, seeded per step.

    `rows=(start, total)`: the images are rows [start, start + n) of a global batch of `total`
    (one host's share); each row gets the draw it gets in the whole batch, whatever the hosts.
    """
    if kind == "none":
        return images
    if kind == "domainbed":  # The paper's RandomResizedCrop, flip, colour jitter, grayscale.
        return augment.domainbed_train(images, seed, rows)
    if kind not in ("crop", "flip_crop"):
        raise ValueError(f"config.data.augment: unknown augmentation {kind!r}.")
    b, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    if pad >= min(h, w):
        raise ValueError(
            f"config.data.augment={kind!r} crops {pad} reflected pixels beyond each side: the "
            f"images need sides over {pad} pixels, not {h}x{w} (or augment='none')."
        )
    start, total = rows if rows is not None else (0, b)
    offsets = tf.random.stateless_uniform([total, 2], seed, 0, 2 * pad + 1, dtype=tf.int32)
    offsets = offsets[start : start + b] - pad
    # The crop of the reflect-padded image (tf.pad's "REFLECT") read from the image itself:
    # padding the batch first took 60% of a demo batch's time (uint8 MirrorPad is slow).
    images = tf.gather(
        images, _reflect(offsets[:, :1] + tf.range(h)[None], h), axis=1, batch_dims=1
    )
    images = tf.gather(
        images, _reflect(offsets[:, 1:] + tf.range(w)[None], w), axis=2, batch_dims=1
    )
    if kind == "flip_crop":
        flip = tf.random.stateless_uniform([total, 1, 1, 1], seed + 1)[start : start + b] < 0.5
        images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    return images


def _reflect(index: "tf.Tensor", size: int) -> "tf.Tensor":
    """Indices in [-size + 1, 2 * size - 2] mirrored into [0, size) without repeating the edge
    (tf.pad's "REFLECT", numpy's "reflect": -1 -> 1, size -> size - 2)."""
    return (size - 1) - tf.abs((size - 1) - tf.abs(index))


def train_dataset(
    data: DomainData,
    *,
    seed: int,
    batch_size_per_domain: int,
    start_step: int,
    num_steps: int,
    augment: str = "none",
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
) -> "tf.data.Dataset":
    """tf.data pipeline of this host's part of each step's batch, for steps [start, num_steps).

    Host i gets the contiguous rows [i * n / hosts, (i + 1) * n / hosts) of the global batch
    (domains concatenated), gathering only those images: the hosts' shares, concatenated in
    process order as the mesh does, are exactly the one-host batch (same augmentation too).
    """
    total = batch_size_per_domain * len(data.train_domains)
    if total % process_count:
        raise ValueError(
            f"The global batch ({batch_size_per_domain} x {len(data.train_domains)} training "
            f"domains = {total}) is not divisible by the number of hosts ({process_count}): "
            "change config.data.batch_size_per_domain."
        )
    lo, hi = process_index * total // process_count, (process_index + 1) * total // process_count
    sources_ = []
    for d, domain in enumerate(data.train_domains):
        s = data.get(domain, "in")
        domain_seed = splits.seed_hash(seed, data.domains.index(domain))
        # This host's rows of this domain's block [d * B, (d + 1) * B) of the global batch.
        first = min(max(lo - d * batch_size_per_domain, 0), batch_size_per_domain)
        last = min(max(hi - d * batch_size_per_domain, 0), batch_size_per_domain)
        sources_.append((tf.constant(s.images), tf.constant(s.labels), domain_seed, first, last))

    def make_batch(step):
        images, labels = [], []
        for d_images, d_labels, domain_seed, first, last in sources_:
            key = tf.stack([tf.constant(domain_seed, tf.int64), step])
            idx = tf.random.stateless_uniform(
                [batch_size_per_domain], key, 0, tf.shape(d_labels, tf.int64)[0], dtype=tf.int64
            )
            idx = idx[first:last]
            images.append(tf.gather(d_images, idx))
            labels.append(tf.gather(d_labels, idx))
        images = tf.concat(images, 0)
        aug_seed = tf.stack([tf.constant(splits.seed_hash(seed, "augment"), tf.int64), step])
        images = _augment(images, augment, aug_seed, rows=(lo, total))
        return {"image": images, "label": tf.concat(labels, 0)}

    ds = tf.data.Dataset.range(start_step, num_steps)
    # Plain graph code (no tensor-dependent Python control flow): autograph's conversion of it
    # took 0.27 s of every run's start.
    make_batch = tf.autograph.experimental.do_not_convert(make_batch)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # One thread per op: the batch is cheap to make, and the cores belong to XLA. (A private
    # thread pool of size 1 instead deadlocked TF when the finished iterator was deleted.)
    options = tf_cpu.data_options(max_intra_op_parallelism=1)
    return ds.with_options(options).prefetch(prefetch)


# One trace per batch shape (evaluation batches are padded to one size, so a run has one):
# reduce_retracing's shape-generalised trace lost the static image sizes the augmentations
# need, and a process evaluating a third image size raised.
@tf.function(autograph=False)
def _augment_eval(images: "tf.Tensor", kind: str, seed: "tf.Tensor") -> "tf.Tensor":
    return _augment(images, kind, seed)


def eval_batches(
    split: Split,
    batch_size: int,
    max_examples: int | None = None,
    augment: str = "none",
    seed: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-size batches of a split (its first `max_examples` if set); the last is padded
    and masked, so each example counts exactly once.

    `augment` (a config.data.augment kind): each batch goes through the training batches'
    augmentation with the stateless seed (seed, batch index), so the images are a pure
    function of (seed, batch size) and an evaluation can be repeated exactly.
    """
    n = len(split.labels) if not max_examples else min(max_examples, len(split.labels))
    for index, start in enumerate(range(0, n, batch_size)):
        end = min(start + batch_size, n)  # Never past max_examples.
        images, labels = split.images[start:end], split.labels[start:end]
        k = len(labels)
        mask = np.zeros(batch_size, bool)
        mask[:k] = True
        if k < batch_size:
            images = np.concatenate(
                [images, np.zeros((batch_size - k, *images.shape[1:]), images.dtype)]
            )
            labels = np.concatenate([labels, np.zeros(batch_size - k, labels.dtype)])
        if augment != "none":
            key = tf.constant([seed, index], tf.int64)
            images = _augment_eval(tf.constant(images), augment, key).numpy()
        yield {"image": images, "label": labels, "mask": mask}


def eval_stream(
    parts: Sequence[tuple[Split, int | None, str, int]], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-size batches over several splits in one pass: `parts` = [(split, max_examples,
    augment, seed)], each split's examples exactly as `eval_batches` gives them, packed back to
    back, so only the last batch is padded. A batch's "segment" (float32 [batch_size,
    len(parts)]) is one-hot in the part each row is of; a padding row is all zero."""
    held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    count = 0
    for index, (split, max_examples, kind, seed) in enumerate(parts):
        for batch in eval_batches(split, batch_size, max_examples, kind, seed):
            k = int(batch["mask"].sum())  # The real rows come first.
            held.append((batch["image"][:k], batch["label"][:k], np.full(k, index)))
            count += k
            while count >= batch_size:
                out, held = _take(held, batch_size, len(parts))
                count -= batch_size
                yield out
    if count:
        yield _take(held, batch_size, len(parts))[0]


def _take(held, batch_size: int, num_parts: int) -> tuple[dict[str, np.ndarray], list]:
    """The first `batch_size` held rows as a batch (zero-padded if fewer), and the rest."""
    images, labels, parts = (np.concatenate(column) for column in zip(*held, strict=True))
    rest = [(images[batch_size:], labels[batch_size:], parts[batch_size:])]
    images, labels, parts = images[:batch_size], labels[:batch_size], parts[:batch_size]
    segment = np.zeros((batch_size, num_parts), np.float32)
    segment[np.arange(len(parts)), parts] = 1.0
    pad = batch_size - len(labels)
    if pad:
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return {"image": images, "label": labels, "segment": segment}, rest
