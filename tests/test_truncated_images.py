"""Damaged image files decoded as DomainBed reads them: truncated JPEGs kept with PIL's
LOAD_TRUNCATED_IMAGES pixels (so the in/out splits index every file, as DomainBed's), unreadable
files an error naming them unless config.data.skip_unreadable, which builds apart."""

import hashlib
import io
import logging
import os
import pathlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from richft_jax import config_lib, run
from richft_jax.data import domainbed, pipeline, sources

PACS = domainbed.SPECS["pacs"]
TRUNCATED = "photo/dog/truncated.jpg"
UNREADABLE = ("photo/horse/random_bytes.jpg", "photo/person/empty.jpg")


def _jpeg(rng: np.random.Generator, height: int, width: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def make_tree(base: pathlib.Path, unreadable: bool) -> None:
    """A PACS tree in DomainBed's layout: two random JPEGs per class, one JPEG cut in half and,
    if `unreadable`, a file of random bytes and an empty file."""
    rng = np.random.default_rng(0)
    for d in PACS.domains:
        for c in PACS.classes:
            (base / d / c).mkdir(parents=True)
            for k in range(2):
                (base / d / c / f"pic_{k}.jpg").write_bytes(_jpeg(rng, 18 + 3 * k, 22))
    whole = _jpeg(rng, 64, 48)
    (base / TRUNCATED).write_bytes(whole[: len(whole) // 2])
    if unreadable:
        (base / UNREADABLE[0]).write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
        (base / UNREADABLE[1]).write_bytes(b"")


def pil_decode_with_flag(path: pathlib.Path, monkeypatch) -> np.ndarray:
    """DomainBed's reading: ImageFolder's pil_loader with LOAD_TRUNCATED_IMAGES = True."""
    with monkeypatch.context() as m:
        m.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
        with open(path, "rb") as f:
            return np.asarray(Image.open(f).convert("RGB"))


def image_folder_files(domain_dir: pathlib.Path) -> list[str]:
    """torchvision ImageFolder's samples (make_dataset): sorted classes, sorted walk."""
    files = []
    for c in sorted(e.name for e in os.scandir(domain_dir) if e.is_dir()):
        for root, _, names in sorted(os.walk(domain_dir / c, followlinks=True)):
            files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(".jpg")]
    return [os.path.relpath(f, domain_dir.parent) for f in files]


def domainbed_in_out(n: int, trial_seed: int, env_i: int, holdout: float = 0.2):
    """DomainBed's train.py: misc.split_dataset(env, int(n * holdout), misc.seed_hash(trial_seed,
    env_i)) returns (out, in), each a _SplitDataset of range(n) shuffled by RandomState(seed),
    in that order."""
    seed = int(hashlib.md5(str((trial_seed, env_i)).encode("utf-8")).hexdigest(), 16) % (2**31)
    keys = list(range(n))
    np.random.RandomState(seed).shuffle(keys)  # noqa: NPY002  (DomainBed's generator)
    k = int(n * holdout)
    return keys[k:], keys[:k]


def rows(builder, split: str) -> list[dict]:
    import tensorflow_datasets as tfds  # noqa: PLC0415

    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("truncated")
    make_tree(root / "bad" / "PACS", unreadable=True)
    make_tree(root / "good" / "PACS", unreadable=False)
    return root


def test_encoded_image_keeps_truncated_pixels_and_names_unreadable_files(trees, monkeypatch):
    base = trees / "bad" / "PACS"
    data, truncated = domainbed.encoded_image(str(base / "photo/dog/pic_0.jpg"))
    assert not truncated and data == (base / "photo/dog/pic_0.jpg").read_bytes()  # as it is
    data, truncated = domainbed.encoded_image(str(base / TRUNCATED))
    assert truncated and data.startswith(b"\x89PNG")  # PIL's pixels, losslessly
    with pytest.raises(OSError, match="truncated"):  # ...which PIL gives only with the flag,
        Image.open(base / TRUNCATED).load()
    expected = pil_decode_with_flag(base / TRUNCATED, monkeypatch)
    assert expected.shape == (64, 48, 3) and (expected[-1] == 128).all()  # missing part filled
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), expected)
    for bad in UNREADABLE:
        with pytest.raises(domainbed.UnreadableImageError, match=str(base / bad)):
            domainbed.encoded_image(str(base / bad))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # Set only while decoding, then restored.
    with pytest.raises(KeyError), domainbed.load_truncated_images():
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
        raise KeyError
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_unreadable_files_fail_the_build_unless_skipped_which_builds_apart(trees, caplog):
    # The trees are tiny: every build here is a deliberate subset of DomainBed's PACS.
    caplog.set_level(logging.WARNING)
    manual, data = str(trees / "bad"), str(trees / "tfds_bad")
    with pytest.raises(domainbed.UnreadableImageError) as err:
        sources.builder_of("pacs", data, manual, allow_count_mismatch=True)
    message = str(err.value)
    for bad in UNREADABLE:
        assert str(trees / "bad" / "PACS" / bad) in message
    assert "DomainBed would fail" in message and "config.data.skip_unreadable=True" in message
    assert "pic_0.jpg" not in message and TRUNCATED not in message
    assert not sources.BUILDERS["pacs"](data_dir=data).is_prepared()  # Nothing left to reuse.

    # Opted in: skipped, named, with what it costs; the truncated file is still kept.
    caplog.clear()
    skipping = sources.builder_of(
        "pacs", data, manual, skip_unreadable=True, allow_count_mismatch=True
    )
    assert skipping.info.splits["photo"].num_examples == 15  # 14 + the truncated one
    assert skipping.info.splits["sketch"].num_examples == 14
    assert [r["filename"].decode() for r in rows(skipping, "photo")] == [
        f for f in image_folder_files(trees / "bad" / "PACS" / "photo") if f not in UNREADABLE
    ]
    log = caplog.text
    assert "skipped 2 unreadable image(s)" in log
    for bad in UNREADABLE:
        assert str(trees / "bad" / "PACS" / bad) in log
    assert "changes this domain's in/out splits relative to DomainBed's" in log
    assert "kept 1 truncated image(s)" in log and str(trees / "bad" / "PACS" / TRUNCATED) in log
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False

    # Each option has its own prepared copy: the skipping one is never reused as DomainBed's.
    assert pathlib.Path(skipping.data_dir).parts[-2:] == ("skip_unreadable", "2.0.0")
    strict = sources.BUILDERS["pacs"](data_dir=data, config="domainbed")
    assert strict.data_dir != skipping.data_dir and not strict.is_prepared()
    with pytest.raises(domainbed.UnreadableImageError, match="random_bytes.jpg"):
        sources.builder_of("pacs", data, manual, allow_count_mismatch=True)
    assert sources.builder_of(
        "pacs", data, manual, skip_unreadable=True, allow_count_mismatch=True
    ).is_prepared()


@pytest.mark.parametrize("trial_seed", [0, 1])
def test_truncated_file_kept_and_splits_are_domainbeds_over_every_file(
    trees, caplog, monkeypatch, trial_seed
):
    caplog.set_level(logging.WARNING)
    base = trees / "good" / "PACS"
    data = str(trees / "tfds_good")  # Shared by both seeds: prepared once.
    builder = sources.builder_of("pacs", data, str(trees / "good"), allow_count_mismatch=True)
    assert pathlib.Path(builder.data_dir).parts[-2:] == ("domainbed", "2.0.0")
    for d in PACS.domains:
        files = image_folder_files(base / d)
        assert [r["filename"].decode() for r in rows(builder, d)] == files
        assert builder.info.splits[d].num_examples == len(files)
    assert builder.info.splits["photo"].num_examples == 15  # The truncated file counts.
    if trial_seed == 0:  # Logged when the dataset is prepared (the first parameter).
        assert "kept 1 truncated image(s)" in caplog.text and str(base / TRUNCATED) in caplog.text

    # The truncated image's pixels are PIL's with LOAD_TRUNCATED_IMAGES, exactly.
    photo = image_folder_files(base / "photo")
    stored = rows(builder, "photo")[photo.index(TRUNCATED)]["image"]
    np.testing.assert_array_equal(stored, pil_decode_with_flag(base / TRUNCATED, monkeypatch))

    # In/out splits: DomainBed's rule over ALL files of each domain, through the real loader.
    arrays = sources.load_arrays("pacs", data, image_size=8)
    split = pipeline.load_domains("pacs", "0", trial_seed, data_dir=data, image_size=8)
    for env_i, d in enumerate(PACS.domains):
        images, labels = arrays[d]
        n = len(image_folder_files(base / d))
        assert len(labels) == n
        for name, idx in zip(("in", "out"), domainbed_in_out(n, trial_seed, env_i), strict=True):
            got = split.get(d, name)
            np.testing.assert_array_equal(got.images, images[idx])
            np.testing.assert_array_equal(got.labels, labels[idx])


def test_skip_unreadable_is_a_data_config_key_threaded_to_the_builder(monkeypatch):
    assert config_lib.base_config().data.skip_unreadable is False
    seen = {}

    def fake_load_arrays(name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(pipeline.sources, "load_arrays", fake_load_arrays)
    c = config_lib.base_config()
    c.data.name, c.data.test_domains = "pacs", "0"
    c.data.skip_unreadable = True
    with pytest.raises(RuntimeError, match="stop"):
        run.load_data(c)
    assert seen["skip_unreadable"] is True
