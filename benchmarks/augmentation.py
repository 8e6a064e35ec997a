"""The training augmentations' cost on this host's CPU: images/s and images per CPU-second of
the augmentation `pipeline.train_dataset` applies (config.data.augment kinds), on random uint8
images.

  python -m benchmarks.augmentation [--kinds=domainbed,crop] [--image_size=224] [--batch=96]
      [--repeats=3] [--rounds=3] [--a_rev=GIT_REVISION] [--out=FILE.json]

The augmentation runs on the host's CPU: in a CPU run it shares the cores with the step, in a
GPU or TPU run it must keep up with the accelerator, so its CPU seconds per image say how many
cores it needs at the step's rate. `--a_rev`: the same rows with the augmentation code
(data/augment.py, data/pipeline.py) as it was at that revision, timed in turn with this tree's
(rounds interleaved; the median round of each row is kept).
"""

import argparse
import json
import os
import pathlib
import statistics
import time
import types

import numpy as np


def augmenters(a_rev: str | None) -> dict[str, types.ModuleType]:
    """{code name: a pipeline module}: this tree's, and the revision's (its pipeline calling its
    own augment module)."""
    from benchmarks.throughput import module_at  # noqa: PLC0415 (JAX, TensorFlow: when measuring)
    from richft_jax.data import augment, pipeline  # noqa: PLC0415

    out = {"this tree": pipeline}
    if a_rev:
        old = module_at(a_rev, pipeline.__name__)
        old.augment = module_at(a_rev, augment.__name__)
        out = {f"at {a_rev}": old, **out}
    return out


def measure(
    kinds: list[str], image_size: int, batch: int, repeats: int, rounds: int, a_rev: str | None
) -> list[dict]:
    """One row per (code, kind): the median round's images/s and images per CPU-second."""
    from richft_jax import tf_cpu  # noqa: PLC0415 (TensorFlow: imported when measuring)

    tf = tf_cpu.tf()
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch, image_size, image_size, 3), np.uint8))
    calls = {}
    for code, module in augmenters(a_rev).items():
        for kind in kinds:
            fn = tf.function(lambda x, s, m=module, k=kind: m._augment(x, k, s), autograph=False)
            fn(images, tf.constant([0, 0], tf.int64)).numpy()  # Traced and compiled once.
            calls[code, kind] = fn
    seconds = {key: [] for key in calls}
    for r in range(rounds):
        for key, fn in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()  # CPU: all the threads'.
            for i in range(repeats):
                fn(images, tf.constant([r, i], tf.int64)).numpy()
            seconds[key].append((time.perf_counter() - wall, time.process_time() - cpu))
    rows = []
    for (code, kind), times in seconds.items():
        wall = statistics.median(t[0] for t in times)
        cpu = statistics.median(t[1] for t in times)
        n = repeats * batch
        rows.append(
            {
                "code": code,
                "kind": kind,
                "image_size": image_size,
                "batch": batch,
                "images_per_s": round(n / wall, 1),
                "images_per_cpu_s": round(n / cpu, 1) if cpu > 0 else None,
                "cpus": os.cpu_count(),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="domainbed,crop", help="config.data.augment kinds.")
    parser.add_argument("--image_size", type=int, default=224, help="Image side, pixels.")
    parser.add_argument("--batch", type=int, default=96, help="Images per call.")
    parser.add_argument("--repeats", type=int, default=3, help="Calls per row and round.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds over all rows.")
    parser.add_argument("--a_rev", help="Git revision of the augmentation code to compare.")
    parser.add_argument("--out", help="Also write the rows as JSON here.")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    rows = measure(kinds, args.image_size, args.batch, args.repeats, args.rounds, args.a_rev)
    for row in rows:
        print(json.dumps(row))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
