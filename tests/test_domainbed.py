"""DomainBed datasets through TFDS: fake DomainBed trees in the real layout, RotatedMNIST and
ColoredMNIST definitions, the paper's augmentation, and tiny runs of the real train loop."""

import dataclasses
import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from richft_jax import config_lib, train
from richft_jax.data import augment, domainbed, mnist_family, pipeline, sources
from richft_jax.tf_cpu import tf as _tf

tf = _tf()
PACS = domainbed.SPECS["pacs"]
TRUNCATED = "sketch/house/truncated.jpg"  # Kept, as DomainBed keeps it (see below).


def _jpeg(rng, height, width) -> bytes:
    import io  # noqa: PLC0415

    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def make_pacs(root: pathlib.Path, per_class: int = 2) -> list[str]:
    """A fake PACS tree as DomainBed's download script leaves it; returns the image files in
    ImageFolder order, relative to root/PACS. Adds a truncated JPEG (DomainBed reads it with
    PIL's LOAD_TRUNCATED_IMAGES; unreadable files: test_truncated_images.py), a text file
    (ignored), a solid-colour PNG and a grey PNG in a nested folder."""
    rng = np.random.default_rng(0)
    base = root / "PACS"
    valid = []
    for d in PACS.domains:
        for c in PACS.classes:
            (base / d / c).mkdir(parents=True)
            for k in range(per_class):
                (base / d / c / f"pic_{k:03d}.jpg").write_bytes(_jpeg(rng, 20 + 5 * k, 30))
                valid.append(f"{d}/{c}/pic_{k:03d}.jpg")
    Image.new("RGB", (40, 24), (200, 10, 50)).save(base / "cartoon/dog/solid.png")
    (base / "cartoon/dog/nested").mkdir()
    Image.new("L", (16, 16), 77).save(base / "cartoon/dog/nested/grey.PNG")
    (base / "cartoon/dog/notes.txt").write_text("not an image")
    whole = _jpeg(rng, 64, 64)
    (base / TRUNCATED).write_bytes(whole[: len(whole) // 2])
    valid += ["cartoon/dog/nested/grey.PNG", "cartoon/dog/solid.png", TRUNCATED]
    # ImageFolder: classes sorted, then a sorted walk (a folder's files before its subfolders').
    return sorted(valid, key=lambda f: (f.split("/")[0], f.split("/")[1], f.count("/"), f))


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    root = tmp_path_factory.mktemp("domainbed")
    files = make_pacs(root / "manual")
    return {"manual": root / "manual", "data": root / "tfds", "files": files}


def test_pacs_builder_order_classes_counts_and_truncated_file(pacs, caplog):
    caplog.set_level(logging.WARNING)
    # A tiny PACS: a deliberate subset (counts other than DomainBed's), allowed as prepare's
    # --allow_count_mismatch allows it; the source is recorded.
    builder = sources.builder_of(
        "pacs", str(pacs["data"]), str(pacs["manual"]), allow_count_mismatch=True
    )
    meta = builder.info.metadata
    assert meta["source"]["manual_dir"] == str((pacs["manual"] / "PACS").resolve())
    assert meta["image_files"] == {"art_painting": 14, "cartoon": 16, "photo": 14, "sketch": 15}
    assert sources.domains_of("pacs") == ("art_painting", "cartoon", "photo", "sketch")
    assert builder.info.features["label"].names == list(PACS.classes)
    assert sources.num_classes_of("pacs") == 7
    for d in PACS.domains:
        expected = [f for f in pacs["files"] if f.startswith(d + "/")]
        ds = tfds_numpy(builder, d)
        assert [f.decode() for f in ds["filename"]] == expected
        # Labels: index of the class folder in the sorted class names.
        assert [PACS.classes[y] for y in ds["label"]] == [f.split("/")[1] for f in expected]
    assert builder.info.splits["photo"].num_examples == 14
    assert builder.info.splits["cartoon"].num_examples == 16  # + solid.png and grey.PNG
    assert builder.info.splits["sketch"].num_examples == 15  # + truncated.jpg, kept
    # The truncated file is named in the log (as kept), the good ones are not.
    log = caplog.text
    assert str(pacs["manual"] / "PACS" / TRUNCATED) in log
    assert "pic_000.jpg" not in log and log.count("kept 1 truncated image(s)") == 1
    assert "unreadable" not in log


def tfds_numpy(builder, split):
    import tensorflow_datasets as tfds  # noqa: PLC0415

    ds = builder.as_dataset(split=split, shuffle_files=False)
    rows = list(tfds.as_numpy(ds))
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_load_arrays_decodes_and_resizes_to_the_configured_size(pacs):
    arrays = sources.load_arrays("pacs", str(pacs["data"]), image_size=12, manual_dir=None)
    images, labels = arrays["cartoon"]
    assert images.shape == (16, 12, 12, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels[:4].tolist() == [0, 0, 0, 0]
    order = [f for f in pacs["files"] if f.startswith("cartoon/")]
    # The solid PNG is exactly its colour after resizing; the grey PNG replicated to RGB.
    solid = images[order.index("cartoon/dog/solid.png")]
    np.testing.assert_array_equal(solid, np.broadcast_to([200, 10, 50], solid.shape))
    np.testing.assert_array_equal(images[order.index("cartoon/dog/nested/grey.PNG")], 77)
    # A JPEG's pixels: the antialiased bilinear resize of the decoded file (TF's and PIL's
    # JPEG decoders differ by a few levels: different IDCTs).
    raw = np.asarray(Image.open(pacs["manual"] / "PACS" / order[0]).convert("RGB"), np.float32)
    ref = tf.image.resize(raw, [12, 12], antialias=True).numpy()
    diff = np.abs(images[0].astype(np.float32) - ref)
    assert diff.max() <= 4.0 and diff.mean() < 1.5
    with pytest.raises(ValueError, match="image_size=0"):
        sources.load_arrays("pacs", str(pacs["data"]), image_size=0)


def test_missing_dataset_domain_or_class_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manual dir.*domainbed.scripts.download"):
        sources.builder_of("pacs", str(tmp_path / "tfds0"), str(tmp_path / "nothing"))
    (tmp_path / "elsewhere" / "something").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"PACS/ with one folder per domain"):
        sources.builder_of("pacs", str(tmp_path / "tfds1"), str(tmp_path / "elsewhere"))
    base = tmp_path / "m" / "PACS"
    for d in PACS.domains[:3]:  # no sketch/
        for c in PACS.classes:
            (base / d / c).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"domain folder\(s\) \['sketch'\] missing"):
        sources.builder_of("pacs", str(tmp_path / "tfds2"), str(tmp_path / "m"))
    for c in PACS.classes:
        if c != "giraffe":
            (base / "sketch" / c).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"\['giraffe'\] missing in .*PACS/sketch"):
        sources.builder_of("pacs", str(tmp_path / "tfds3"), str(tmp_path / "m"))
    (base / "photo" / "unicorn").mkdir()
    with pytest.raises(ValueError, match=r"unexpected class folder\(s\) \['unicorn'\]"):
        domainbed.check_layout(base, PACS)


def test_classes_read_from_folders_when_not_listed(tmp_path):
    # OfficeHome's classes are the union of the class folders; "Real World" becomes a split
    # name without a space. A class missing in one domain is named.
    spec = dataclasses.replace(domainbed.SPECS["office_home"], num_classes=2)
    assert spec.splits == ("Art", "Clipart", "Product", "Real_World")
    for d in spec.domains:
        for c in ("Mug", "Bike"):
            (tmp_path / d / c).mkdir(parents=True)
    assert domainbed.check_layout(tmp_path, spec) == ("Bike", "Mug")
    (tmp_path / "Product" / "Mug").rmdir()
    with pytest.raises(FileNotFoundError, match=r"\['Mug'\] missing in .*Product"):
        domainbed.check_layout(tmp_path, spec)
    wrong = dataclasses.replace(spec, num_classes=65)
    (tmp_path / "Product" / "Mug").mkdir()
    with pytest.raises(ValueError, match="2 class folders .* expected 65"):
        domainbed.check_layout(tmp_path, wrong)


# ------------------------------------------------------------------ RotatedMNIST, ColoredMNIST
@pytest.fixture(scope="module")
def digits():
    return mnist_family.embedded_mnist()


def test_rotate_is_counter_clockwise_with_zero_fill():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 14, 20:27] = 255  # A bar right of the centre...
    turned = mnist_family.rotate(image, 90)[0]
    rows, cols = np.nonzero(turned > 128)
    assert cols.min() >= 13 and cols.max() <= 15 and rows.max() <= 8  # ...is above it.
    assert turned[20:, :].max() == 0 and turned.sum() > 0.8 * image.sum()


def test_mnist_family_deals_and_flips_as_its_docstring_states():
    """On fake digits (no MNIST, no TFDS build): numpy's permutation from the fixed SEED dealt
    i::n, the same on every call; ColoredMNIST's label flips (p = 0.25) then colour flips (the
    domain's p), drawn in that order from default_rng([SEED, 1, i]); colour 0 red, 1 green."""
    assert mnist_family.ANGLES == (0, 15, 30, 45, 60, 75)
    assert (mnist_family.LABEL_NOISE, mnist_family.COLOUR_FLIP) == (0.25, (0.1, 0.2, 0.9))
    n = 6000
    index = np.arange(n)
    fake = np.zeros((n, 28, 28), np.uint8)  # Each digit's index in pixels the 2x subsample keeps.
    fake[:, 0, 0], fake[:, 0, 2], fake[:, 2, 0] = index % 256, index // 256, 255
    rotated = mnist_family.rotated_domains(fake[:600], index[:600])  # Labels = indices.
    order = np.random.default_rng([mnist_family.SEED, 0]).permutation(600)
    for i, (_, y) in enumerate(rotated.values()):
        np.testing.assert_array_equal(y, order[i::6])
    np.testing.assert_array_equal(rotated["0deg"][0][..., 1], fake[order[0::6]])
    digits = (index * 7) % 10
    colored = mnist_family.colored_domains(fake, digits)
    order = np.random.default_rng([mnist_family.SEED, 1]).permutation(n)
    for i, (flip, (x, y)) in enumerate(zip((0.1, 0.2, 0.9), colored.values(), strict=True)):
        assert x.shape == (2000, 14, 14, 3) and x[..., 2].max() == 0
        colour = x[:, 1, 0].argmax(-1)  # The 255 marker sits in the digit's colour channel.
        rows = np.arange(len(x))
        np.testing.assert_array_equal(
            x[rows, 0, 0, colour] + 256 * x[rows, 0, 1, colour].astype(int), order[i::3]
        )
        rng = np.random.default_rng([mnist_family.SEED, 1, i])
        label_flips, colour_flips = rng.random(len(x)) < 0.25, rng.random(len(x)) < flip
        np.testing.assert_array_equal(y, (digits[order[i::3]] < 5) ^ label_flips)
        np.testing.assert_array_equal(colour, y ^ colour_flips)
        assert abs(np.mean(y != (digits[order[i::3]] < 5)) - 0.25) < 0.04  # sd 0.01
        assert abs(np.mean(colour != y) - flip) < 0.04
    again = mnist_family.colored_domains(fake, digits)  # No run seed: the same every time.
    for (x, y), (x2, y2) in zip(colored.values(), again.values(), strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)


def test_rotated_mnist_embedded_domains(data_dir, digits):
    images, labels = digits
    arrays = sources.load_arrays("rotated_mnist_embedded", str(data_dir))
    assert tuple(arrays) == ("0deg", "15deg", "30deg", "45deg", "60deg", "75deg")
    assert sources.num_classes_of("rotated_mnist_embedded") == 10
    parts = mnist_family.deal(len(images), 6, np.random.default_rng([mnist_family.SEED, 0]))
    assert sorted(np.concatenate(parts).tolist()) == list(range(5000))  # disjoint, complete
    for (name, (x, y)), angle, idx in zip(arrays.items(), mnist_family.ANGLES, parts, strict=True):
        assert x.shape == (len(idx), 28, 28, 3) and len(idx) in (833, 834)
        np.testing.assert_array_equal(y, labels[idx])
        np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey as RGB
        first = idx[:200]  # Exact pixels checked on a subset: rotating is the slow part.
        np.testing.assert_array_equal(x[:200, ..., 0], mnist_family.rotate(images[first], angle))
        # Undoing the rotation gives back the digits (up to interpolation blur).
        back = mnist_family.rotate(x[:200, ..., 0], -angle).astype(np.float32)
        src = images[first].astype(np.float32)
        corr = np.corrcoef(back.ravel(), src.ravel())[0, 1]
        assert corr > (0.999 if angle == 0 else 0.85), name
        if angle >= 45:  # ...and the rotated images are not the digits themselves.
            assert np.corrcoef(x[:200, ..., 0].ravel(), src.ravel())[0, 1] < 0.6


def test_colored_mnist_embedded_label_noise_and_colour_rates(data_dir, digits):
    images, labels = digits
    arrays = sources.load_arrays("colored_mnist_embedded", str(data_dir))
    assert tuple(arrays) == ("plus90", "plus80", "minus90")
    assert sources.num_classes_of("colored_mnist_embedded") == 2
    parts = mnist_family.deal(len(images), 3, np.random.default_rng([mnist_family.SEED, 1]))
    for (name, (x, y)), flip, idx in zip(arrays.items(), (0.1, 0.2, 0.9), parts, strict=True):
        assert x.shape == (len(idx), 14, 14, 3) and set(np.unique(y)) == {0, 1}
        assert x[..., 2].max() == 0  # no blue
        colour = (x[..., 1].sum((1, 2)) > x[..., 0].sum((1, 2))).astype(int)  # 0 red, 1 green
        assert (x[np.arange(len(x)), :, :, 1 - colour] == 0).all()  # one channel only
        np.testing.assert_array_equal(x[np.arange(len(x)), :, :, colour], images[idx][:, ::2, ::2])
        # 25% label noise on y = digit < 5; colour disagrees with y at the domain's rate
        # (n = 1,666: 4 standard deviations is under 0.045).
        noise = np.mean(y != (labels[idx] < 5))
        assert abs(noise - 0.25) < 0.045, (name, noise)
        assert abs(np.mean(colour != y) - flip) < 0.045, (name, np.mean(colour != y))


# --------------------------------------------------------------------------- augmentation
def test_crop_boxes_follow_random_resized_crop():
    u = tf.random.stateless_uniform([2000, 4 * augment.CROP_ATTEMPTS], [3, 4])
    boxes = augment.crop_boxes(u, 32, 48).numpy()
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0 + 1e-6
    h = (boxes[:, 2] - boxes[:, 0]) * 31 + 1
    w = (boxes[:, 3] - boxes[:, 1]) * 47 + 1
    area = h * w / (32 * 48)
    assert area.min() > 0.66 and area.max() <= 1.0 + 1e-5  # scale 0.7-1.0, up to rounding
    assert (w / h).min() > 0.7 and (w / h).max() < 1.4  # ratio 3/4-4/3, up to rounding
    assert area.std() > 0.05  # really random
    # A strip no box of that area and ratio fits in: torchvision's centre-crop fallback.
    strip = augment.crop_boxes(u[:3], 4, 100).numpy()
    np.testing.assert_allclose(strip[:, [0, 2]], [[0, 1]] * 3, atol=1e-6)
    np.testing.assert_allclose(strip[:, 1], (100 - 5) // 2 / 99, atol=1e-6)


def test_color_jitter_matches_its_definition():
    x = tf.constant(np.random.default_rng(1).uniform(0.1, 0.6, (2, 5, 5, 3)), tf.float32)
    identity = augment.color_jitter(x, tf.constant([[1.0, 1.0, 1.0, 0.0]] * 2))
    np.testing.assert_allclose(identity.numpy(), x.numpy(), atol=1e-5)
    bright = augment.color_jitter(x, tf.constant([[1.3, 1.0, 1.0, 0.0]] * 2))
    np.testing.assert_allclose(bright.numpy(), np.clip(x.numpy() * 1.3, 0, 1), atol=1e-5)
    grey = augment.color_jitter(x, tf.constant([[1.0, 1.0, 0.0, 0.0]] * 2)).numpy()
    luma = x.numpy() @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(grey, np.repeat(luma[..., None], 3, -1), atol=1e-5)
    flat = augment.color_jitter(x, tf.constant([[1.0, 0.0, 1.0, 0.0]] * 2)).numpy()
    np.testing.assert_allclose(
        flat, np.broadcast_to(luma.mean((1, 2))[:, None, None, None], flat.shape), atol=1e-5
    )
    red = tf.constant([[[[1.0, 0.0, 0.0]]]])
    green = augment.color_jitter(red, tf.constant([[1.0, 1.0, 1.0, 1.0 / 3.0]]))
    np.testing.assert_allclose(green.numpy().ravel(), [0, 1, 0], atol=1e-5)


def test_domainbed_augmentation_is_deterministic_per_step_and_host_independent():
    rng = np.random.default_rng(2)
    images = tf.constant(rng.integers(0, 256, (400, 8, 8, 3), dtype=np.uint8))
    seed = tf.constant([7, 3], tf.int64)
    out = augment.domainbed_train(images, seed).numpy()
    assert out.shape == (400, 8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, augment.domainbed_train(images, seed).numpy())
    other = augment.domainbed_train(images, seed + [0, 1]).numpy()
    assert (other != out).mean() > 0.5
    assert (out != images.numpy()).mean() > 0.5
    # One host's rows get exactly the draws they get in the whole batch.
    part = augment.domainbed_train(images[100:150], seed, rows=(100, 400)).numpy()
    np.testing.assert_array_equal(part, out[100:150])
    # Random grayscale with p = 0.1 (random colour images are never grey by chance).
    is_grey = (out[..., 0] == out[..., 1]).all((1, 2)) & (out[..., 1] == out[..., 2]).all((1, 2))
    assert 0.05 < is_grey.mean() < 0.16, is_grey.mean()
    with pytest.raises(ValueError, match="augment='domainbed' needs RGB"):
        augment.domainbed_train(images[..., :1], seed)


def test_domainbed_augmentation_is_its_steps_composed_as_written():
    """The fused flip / jitter / grayscale program gives what the ops give one at a time, up to
    float rounding (a uint8 value off by one, rarely), from the same draws."""
    images = tf.constant(np.random.default_rng(3).integers(0, 256, (64, 24, 24, 3), np.uint8))
    seed = tf.constant([5, 9], tf.int64)
    seeds = tf.random.split(seed, 5)
    u = augment._draws([4 * augment.CROP_ATTEMPTS], seeds[0], None, 64)
    x = tf.image.crop_and_resize(
        tf.cast(images, tf.float32) / 255.0,
        augment.crop_boxes(u, 24, 24),
        tf.range(64),
        [24, 24],
        "bilinear",
    )
    x = tf.where(augment._draws([1, 1, 1], seeds[1], None, 64) < 0.5, x[:, :, ::-1], x)
    u = augment._draws([4], seeds[2], None, 64).numpy()
    factors = np.concatenate([1 + 0.3 * (2 * u[:, :3] - 1), 0.3 * (2 * u[:, 3:] - 1)], 1)
    x = augment.color_jitter(x, tf.constant(factors, tf.float32))
    grey = augment._draws([1, 1, 1], seeds[3], None, 64) < augment.GRAYSCALE_P
    x = tf.where(grey, tf.tile(augment.grayscale(x), [1, 1, 1, 3]), x)
    expected = np.round(x.numpy() * 255.0).astype(int)
    diff = np.abs(augment.domainbed_train(images, seed).numpy().astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 1e-3, (diff.max(), diff.mean())


# A training pipeline with DomainBed's augmentation, in a process whose XLA_FLAGS holds a flag
# no XLA knows (as JAX's flags can be to TensorFlow's older XLA).
_FOREIGN_FLAGS = r"""
import os, numpy as np
from richft_jax.data import pipeline
rng = np.random.default_rng(0)
def split(domain, name):
    images = rng.integers(0, 256, (8, 12, 12, 3), np.uint8)
    return pipeline.Split(domain, name, domain == "c", images, np.arange(8, dtype=np.int32) % 2)
splits = [split(d, s) for d in "abc" for s in ("in", "out")]
data = pipeline.DomainData("toy", ("a", "b", "c"), ("c",), 2, tuple(splits))
ds = pipeline.train_dataset(data, seed=0, batch_size_per_domain=4, start_step=0, num_steps=3,
                            augment="domainbed")
batches = list(ds.as_numpy_iterator())
print(len(batches), batches[0]["image"].shape, os.environ["XLA_FLAGS"])
"""


def test_domainbed_augmentation_runs_whatever_xla_flags_jax_was_given():
    """TensorFlow's XLA never reads XLA_FLAGS (it would abort the process on a flag only
    JAX's newer XLA knows); the variable is left as it was for JAX."""
    flags = "--xla_flag_only_a_newer_xla_knows=1"
    env = {**os.environ, "XLA_FLAGS": flags}
    done = subprocess.run(
        [sys.executable, "-c", _FOREIGN_FLAGS], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == f"3 (8, 12, 12, 3) {flags}"


def test_train_dataset_with_domainbed_augment_replays_steps(pacs):
    data = pipeline.load_domains("pacs", "0", 0, data_dir=str(pacs["data"]), image_size=16)
    assert data.get("photo", "in").images.shape[1:] == (16, 16, 3)
    assert len(data.get("photo", "out").labels) == 2  # int(14 * 0.2)

    def batches(start):
        ds = pipeline.train_dataset(
            data,
            seed=5,
            batch_size_per_domain=4,
            start_step=start,
            num_steps=4,
            augment="domainbed",
        )
        # No autotuning: its model thread held the finished iterator's deletion for ~16 s at
        # the end of one demo run in two (the "teardown" phase).
        assert ds.options().autotune.enabled is False
        assert ds.options().threading.max_intra_op_parallelism == 1
        return list(ds.as_numpy_iterator())

    full, resumed = batches(0), batches(2)
    assert full[0]["image"].shape == (12, 16, 16, 3) and full[0]["image"].dtype == np.uint8
    for a, b in zip(full[2:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(full[0]["image"], full[1]["image"])


# ------------------------------------------------------------------- tiny runs, real loop
def pacs_config(pacs, model: str, **kwargs):
    # Runs find the tiny PACS prepared (as a deliberate subset: see the first test).
    sources.builder_of("pacs", str(pacs["data"]), str(pacs["manual"]), allow_count_mismatch=True)
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.name = "pacs"
    c.data.data_dir = str(pacs["data"])
    c.data.manual_dir = str(pacs["manual"])
    c.data.test_domains = "0"
    c.data.image_size = 16
    c.data.augment = "domainbed"
    c.data.batch_size_per_domain = 8
    c.data.eval_batch_size = 32
    c.pretrained.path = None
    c.pretrained.pretrain_config = None
    c.model.name = model
    c.model.kwargs = kwargs
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 2, 1, 2, 2
    return c


@pytest.mark.parametrize(
    "model,kwargs,normalize",
    [
        (
            "small_resnet",
            {"widths": (4, 4, 8, 8), "blocks": (1, 1, 1, 1), "feature_dim": 32},
            "imagenet",
        ),
        (
            "small_vit",
            {"patch": 8, "dim": 16, "depth": 1, "heads": 2, "feature_dim": 32},
            "minus_one_one",
        ),
    ],
)
def test_tiny_runs_on_fake_pacs(pacs, tmp_path, model, kwargs, normalize):
    c = pacs_config(pacs, model, **kwargs)
    c.data.normalize = normalize
    summary = train.train_and_evaluate(c, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["domain"], r["split"]) for r in rows} == {
        (d, s) for d in PACS.domains for s in ("in", "out")
    }
    counts = {d: 14 for d in PACS.domains} | {"cartoon": 16, "sketch": 15}
    for d in PACS.domains:
        assert sum(r["num_examples"] for r in rows if r["domain"] == d) == counts[d]
    for r in rows:
        assert r["step"] == 2 and r["dataset"] == "pacs" and 0 <= r["accuracy"] <= 1
        assert r["is_test_domain"] == (r["domain"] == "art_painting")
    assert np.isfinite(summary["final_train"]["loss"]) and summary["final_train"]["loss"] > 0
    assert summary["selected"]["step"] == 2 and summary["num_steps"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["data"]["image_size"] == 16


def test_domainnet_official_splits_from_the_tfds_catalog(tmp_path):
    # TFDS's `domainnet` (official train/test lists) through tfds' own mock data: its train
    # and test are the in and out splits, labels renumbered to DomainBed's sorted class order.
    import tensorflow_datasets as tfds  # noqa: PLC0415

    assert sources.has_official_splits("domainnet_official")
    assert not sources.has_official_splits("domainnet")
    assert sources.num_classes_of("domainnet_official") == 345
    with tfds.testing.mock_data(num_examples=3):
        data = pipeline.load_domains("domainnet_official", "4", 0, str(tmp_path), image_size=8)
        builder = tfds.builder("domainnet/real", data_dir=str(tmp_path))
        raw = list(tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False)))
    assert data.domains == domainbed.SPECS["domainnet"].splits and data.test_domains == ("real",)
    out = data.get("real", "out")
    assert out.images.shape == (3, 8, 8, 3) and out.images.dtype == np.uint8
    names = builder.info.features["label"].names
    assert names != sorted(names)  # TFDS's order is not ImageFolder's...
    assert [sorted(names)[y] for y in out.labels] == [names[r["label"]] for r in raw]  # ...mapped.
