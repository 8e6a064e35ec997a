"""Tests of the embedded datasets: rendering, the TFDS builders, loading and DomainBed splits."""

import hashlib
import os
import pathlib

import numpy as np
import pytest

import richft_jax.data  # noqa: F401  (hides accelerators from TensorFlow before tfds loads)
from richft_jax.data import digits_domains, letters, pipeline, render, sources, splits


@pytest.fixture(scope="module")
def domains() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Generates every digits domain once for the module."""
    return {d: digits_domains.generate_domain(d) for d in digits_domains.DOMAINS}


@pytest.fixture(scope="module")
def small_letters():
    """Shrinks the letters splits so that building them in tests takes a second."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(letters, "SPLIT_SIZES", {"train": 520, "test": 104})
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data directory shared by the module, so each builder is prepared once."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def loaded_digits(data_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Prepares digits_domains into the temporary data dir and loads every domain."""
    return sources.load_arrays("digits_domains", data_dir)


def test_font_paths_are_text_fonts():
    paths = render.font_paths()
    names = [p.rsplit("/", 1)[-1] for p in paths]
    assert paths == sorted(paths)
    assert "DejaVuSans.ttf" in names
    for excluded in (
        "cmex10.ttf",
        "cmsy10.ttf",
        "STIXSizOneSymReg.ttf",
        "LastResortHE-Regular.ttf",
    ):
        assert excluded not in names
    assert not any(n.startswith("STIXNonUni") for n in names)


@pytest.mark.parametrize("strength", ["mild", "heavy"])
def test_render_glyphs_shape_and_determinism(strength):
    chars = list("0123456789AbZ")
    first = render.render_glyphs(chars, np.random.default_rng(3), strength=strength)
    second = render.render_glyphs(chars, np.random.default_rng(3), strength=strength)
    other = render.render_glyphs(chars, np.random.default_rng(4), strength=strength)
    assert first.shape == (len(chars), 32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
    # Every glyph has visible contrast: some pixels far from others.
    spread = first.reshape(len(chars), -1).max(1).astype(int) - first.reshape(len(chars), -1).min(1)
    assert (spread > 60).all()


def test_render_glyphs_draws_the_character():
    # Same rng, different characters: the glyph shape, not only the colours, must differ.
    ones = render.render_glyphs(["1"] * 8, np.random.default_rng(0))
    eights = render.render_glyphs(["8"] * 8, np.random.default_rng(0))
    assert np.abs(ones.astype(int) - eights.astype(int)).mean() > 5


def test_render_glyphs_rejects_unknown_strength():
    with pytest.raises(ValueError, match="extreme"):
        render.render_glyphs(["1"], np.random.default_rng(0), strength="extreme")


EXPECTED_SIZES = {"mnist": 2500, "mnist_m": 2500, "digits": 1797, "syn": 2500}


@pytest.mark.parametrize("domain", digits_domains.DOMAINS)
def test_domain_shapes_and_labels(domains, domain):
    images, labels = domains[domain]
    n = EXPECTED_SIZES[domain]
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == digits_domains.NUM_CLASSES - 1
    # Every class is reasonably represented.
    assert np.bincount(labels, minlength=10).min() > n / 10 * 0.7


@pytest.mark.parametrize("domain", digits_domains.DOMAINS)
def test_domain_is_deterministic(domains, domain):
    images, labels = digits_domains.generate_domain(domain)
    assert images.tobytes() == domains[domain][0].tobytes()
    assert labels.tobytes() == domains[domain][1].tobytes()


def test_domains_look_different(domains):
    def colourfulness(images: np.ndarray) -> float:
        x = images.astype(np.float32)
        return float(np.abs(x - x.mean(-1, keepdims=True)).mean())

    mnist, mnist_m, digits, syn = (domains[d][0] for d in digits_domains.DOMAINS)
    # mnist and digits are grey, mnist_m and syn are colourful.
    assert (mnist[..., 0] == mnist[..., 1]).all() and (mnist[..., 1] == mnist[..., 2]).all()
    assert (digits[..., 0] == digits[..., 1]).all() and (digits[..., 1] == digits[..., 2]).all()
    assert colourfulness(mnist_m) > 10 and colourfulness(syn) > 10
    # mnist is mostly black background, mnist_m mostly photo, digits fill the frame more.
    assert mnist.mean() < 50 and mnist_m.mean() > 60
    assert digits.mean() > mnist.mean() + 10
    # mnist has an empty 2-pixel padding border; digits (upsampled 8x8) fill the frame.
    assert mnist[:, :2].max() == 0 and digits[:, :2].max() > 0
    means = [domains[d][0].mean((0, 1, 2)) for d in digits_domains.DOMAINS]
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert np.abs(means[i] - means[j]).max() > 3


def test_mnist_halves_are_disjoint(domains):
    (first, first_labels), (second, second_labels) = digits_domains._mnist_halves()
    assert len(first) == len(second) == 2500
    first_set = {im.tobytes() for im in first}
    assert not any(im.tobytes() in first_set for im in second)
    # The public domains are built from those halves.
    np.testing.assert_array_equal(domains["mnist"][0][..., 0], first)
    np.testing.assert_array_equal(domains["mnist"][1], first_labels)
    np.testing.assert_array_equal(domains["mnist_m"][1], second_labels)


def test_mnist_m_blend_formula(monkeypatch):
    # With one flat photo of value 100 the MNIST-M blend |digit - photo| is exactly predictable.
    flat = np.full((40, 50, 3), 100, np.uint8)
    monkeypatch.setattr(digits_domains, "_photos", lambda: [flat])
    images, _ = digits_domains._mnist_m(np.random.default_rng(0))
    _, (digits, _) = digits_domains._mnist_halves()
    expected = np.rint(np.abs(digits.astype(np.float32) - 100)).astype(np.uint8)
    np.testing.assert_array_equal(images, np.repeat(expected[..., None], 3, -1))


def test_photos_load_offline():
    photos = digits_domains._photos()
    assert len(photos) == len(digits_domains.PHOTOS)
    for photo in photos:
        assert photo.ndim == 3 and photo.shape[-1] == 3 and photo.dtype == np.uint8
        assert min(photo.shape[:2]) >= digits_domains.IMAGE_SIZE


def test_unknown_domain_raises():
    with pytest.raises(ValueError, match="svhn.*mnist"):
        digits_domains.generate_domain("svhn")


def test_letters_split(small_letters):
    images, labels = letters.generate_split("train")
    assert images.shape == (520, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels, minlength=52), np.full(52, 10))
    again, again_labels = letters.generate_split("train")
    assert images.tobytes() == again.tobytes() and labels.tobytes() == again_labels.tobytes()
    test_images, _ = letters.generate_split("test")
    assert test_images.shape == (104, 32, 32, 3)
    assert not np.array_equal(test_images, images[:104])
    assert letters.CLASSES[0] == "A" and letters.CLASSES[26] == "a" and len(letters.CLASSES) == 52
    with pytest.raises(ValueError, match="validation"):
        letters.generate_split("validation")


def test_load_arrays_round_trip(loaded_digits, domains):
    assert list(loaded_digits) == list(digits_domains.DOMAINS)
    for domain, (images, labels) in loaded_digits.items():
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        np.testing.assert_array_equal(images, domains[domain][0])
        np.testing.assert_array_equal(labels, domains[domain][1])


def test_load_arrays_subset_reuses_prepared(loaded_digits, data_dir, monkeypatch):
    # Already prepared: loading must not generate again.
    def fail(domain):
        raise AssertionError(f"regenerated {domain}")

    monkeypatch.setattr(digits_domains, "generate_domain", fail)
    subset = sources.load_arrays("digits_domains", data_dir, domains=["syn", "mnist"])
    assert list(subset) == ["syn", "mnist"]
    np.testing.assert_array_equal(subset["syn"][0], loaded_digits["syn"][0])


def test_a_later_load_gets_the_decoded_arrays_until_the_files_change(
    loaded_digits, data_dir, monkeypatch
):
    """The same prepared files load once per process: later loads get the same (read-only)
    arrays without decoding; a changed file, or arrays over DECODED_CACHE_BYTES, decode again."""
    decoded = []
    resize = sources._resize
    monkeypatch.setattr(sources, "_resize", lambda x, size: decoded.append(1) or resize(x, size))
    monkeypatch.setattr(sources, "_decoded", type(sources._decoded)())

    first = sources.load_arrays("digits_domains", data_dir, domains=["syn"])["syn"]
    again = sources.load_arrays("digits_domains", data_dir, domains=["syn", "mnist"])
    assert len(decoded) == 2  # syn once, mnist once.
    assert again["syn"][0] is first[0] and again["syn"][1] is first[1]
    with pytest.raises(ValueError, match="read-only"):
        first[0][0, 0, 0, 0] = 1
    np.testing.assert_array_equal(first[0], loaded_digits["syn"][0])

    prepared = sources.builder_of("digits_domains", data_dir).data_dir
    info = pathlib.Path(prepared) / "dataset_info.json"
    stat = info.stat()
    os.utime(info, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # A rewritten file.
    changed = sources.load_arrays("digits_domains", data_dir, domains=["syn"])["syn"]
    assert len(decoded) == 3 and changed[0] is not first[0]
    np.testing.assert_array_equal(changed[0], first[0])

    monkeypatch.setattr(sources, "DECODED_CACHE_BYTES", changed[0].nbytes - 1)
    monkeypatch.setattr(sources, "_decoded", type(sources._decoded)())
    loads = [sources.load_arrays("digits_domains", data_dir, domains=["syn"]) for _ in range(2)]
    assert len(decoded) == 5 and loads[0]["syn"][0] is not loads[1]["syn"][0]  # Not kept.
    assert sources._files_of("gs://bucket/tfds/digits_domains/1.0.0") is None
    assert sources._files_of(str(pathlib.Path(prepared) / "missing")) is None


def test_load_letters(small_letters, data_dir):
    arrays = sources.load_arrays("letters", data_dir)
    assert sources.domains_of("letters") == ("train", "test")
    images, labels = arrays["train"]
    expected_images, expected_labels = letters.generate_split("train")
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert arrays["test"][0].shape == (104, 32, 32, 3)


def test_load_arrays_errors(data_dir):
    with pytest.raises(ValueError, match="imagenet.*digits_domains"):
        sources.load_arrays("imagenet", data_dir)
    with pytest.raises(ValueError, match="usps.*mnist_m"):
        sources.load_arrays("digits_domains", data_dir, domains=["mnist", "usps"])
    assert sources.domains_of("digits_domains") == digits_domains.DOMAINS


def test_seed_hash_known_value():
    expected = int(hashlib.md5(str((0, 1)).encode("utf-8")).hexdigest(), 16) % (2**31)
    assert splits.seed_hash(0, 1) == expected
    assert splits.seed_hash(0, 1) != splits.seed_hash(1, 0)
    assert 0 <= splits.seed_hash("a", 3) < 2**31


def test_in_out_split():
    n = 1797
    inside, outside = splits.in_out_split(n, trial_seed=0, domain_index=2)
    assert inside.dtype == np.int64 and outside.dtype == np.int64
    assert len(outside) == int(n * 0.2) and len(inside) == n - int(n * 0.2)
    assert not set(inside) & set(outside)
    np.testing.assert_array_equal(np.sort(np.concatenate([inside, outside])), np.arange(n))
    # Same as DomainBed's recipe, spelled out.
    keys = list(range(n))
    np.random.RandomState(splits.seed_hash(0, 2)).shuffle(keys)  # noqa: NPY002
    np.testing.assert_array_equal(outside, keys[: int(n * 0.2)])
    again_in, again_out = splits.in_out_split(n, 0, 2)
    np.testing.assert_array_equal(again_in, inside)
    np.testing.assert_array_equal(again_out, outside)
    assert not np.array_equal(splits.in_out_split(n, 1, 2)[1], outside)
    assert not np.array_equal(splits.in_out_split(n, 0, 3)[1], outside)
    assert len(splits.in_out_split(100, 0, 0, holdout_fraction=0.5)[1]) == 50


@pytest.mark.parametrize("shape", [(6, 32, 32, 3), (5, 7, 9, 1), (3, 5, 5, 2)])
def test_crop_reads_the_reflect_padded_image(shape):
    """The crop augmentations equal cropping a reflect-padded copy (np.pad "reflect" = tf.pad
    "REFLECT") at the same stateless offsets; a host's rows are its rows of the whole batch."""
    tf = pipeline.tf
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    n, h, w, _ = shape
    seed, pad = tf.constant([7, 11], tf.int64), 4
    offsets = tf.random.stateless_uniform([n, 2], seed, 0, 2 * pad + 1, dtype=tf.int32).numpy()
    flips = tf.random.stateless_uniform([n, 1, 1, 1], seed + 1).numpy().ravel() < 0.5
    padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)], mode="reflect")
    crops = np.stack([padded[i, r : r + h, c : c + w] for i, (r, c) in enumerate(offsets)])
    assert len({tuple(o) for o in offsets}) > 1 and {0, 2 * pad} & set(offsets.ravel())
    np.testing.assert_array_equal(pipeline._augment(tf.constant(images), "crop", seed), crops)
    flipped = np.where(flips[:, None, None, None], crops[:, :, ::-1], crops)
    out = pipeline._augment(tf.constant(images), "flip_crop", seed)
    np.testing.assert_array_equal(out, flipped)
    share = pipeline._augment(tf.constant(images[1:3]), "flip_crop", seed, rows=(1, n))
    np.testing.assert_array_equal(share, flipped[1:3])
    with pytest.raises(ValueError, match=r"augment='crop' crops 4 reflected pixels .* not 4x9"):
        pipeline._augment(tf.zeros((2, 4, 9, 1), tf.uint8), "crop", seed)
