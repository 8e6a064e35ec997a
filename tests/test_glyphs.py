"""Tests of the glyphs pretraining set: its classes, the fonts that render them, deterministic
generation, the TFDS builder and a tiny pretraining run on it (splits shrunk: the full 208,000
images take minutes to render)."""

import json
import string

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import richft_jax.data  # noqa: F401  (hides accelerators from TensorFlow before tfds loads)
from richft_jax import config_lib, run, train
from richft_jax.data import catalog, glyphs, letters, render, sources

# A tiny pretraining draws 30 x 64 images: 20 per class are as many as it sees.
SMALL = {"train": 20 * len(glyphs.CLASSES), "test": 2 * len(glyphs.CLASSES)}


def test_classes_are_unique_and_disjoint_from_digits():
    assert len(glyphs.CLASSES) == 98 and len(set(glyphs.CLASSES)) == 98
    assert not set(glyphs.CLASSES) & set(string.digits)
    assert all(len(c) == 1 and not c.isspace() for c in glyphs.CLASSES)
    assert glyphs.CLASSES[:52] == letters.CLASSES  # Labels 0..51 are the letters' labels.
    assert (len(glyphs.SYMBOLS), len(glyphs.GREEK)) == (21, 25)
    assert not set(glyphs.CLASSES) & set(".,'`\":;|/\\_ΘθΟο")  # Tiny marks, bars, O-likes.
    assert sources.num_classes_of("glyphs") == 98
    assert glyphs.SPLIT_SIZES == {"train": 200_000, "test": 8_000}


def test_every_font_renders_every_class_distinctly():
    fonts = glyphs.fonts()
    assert len(fonts) >= 6  # Enough font variety to keep the Greek letters.
    assert set(fonts) <= set(render.font_paths())  # A subset of the letters' fonts.
    for path in fonts:
        *masks, notdef = render.glyph_masks(path, "".join(glyphs.CLASSES))
        assert all(m.sum() >= 10 and not np.array_equal(m, notdef) for m in masks), path
        assert len({m.tobytes() for m in masks}) == len(masks), path


def test_rendered_classes_are_distinct_and_inked_in_every_font():
    # Same rng for every class: same colours, pose and noise, so only the glyph differs.
    for path in glyphs.fonts():

        def draw(char, path=path):
            rng = np.random.default_rng(0)
            return render.render_glyphs([char], rng, strength="heavy", fonts=[path])[0]

        blank = draw(" ").astype(int)  # The background and noise alone.
        images = [draw(c) for c in glyphs.CLASSES]
        ink = [np.abs(image.astype(int) - blank).max(-1) > 30 for image in images]
        assert min(m.sum() for m in ink) >= 16, path  # '-', the smallest: 22+ of 1,024 pixels.
        assert len({image.tobytes() for image in images}) == len(images), path


def _centred_mask(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray:
    """A glyph's mask with its bounding box centred, as render.render_glyphs places it."""
    left, top, right, bottom = font.getbbox(char)
    image = Image.new("L", (96, 96))
    ImageDraw.Draw(image).text(
        (48 - (left + right) / 2, 48 - (top + bottom) / 2), char, font=font, fill=255
    )
    return np.asarray(image) > 127


def test_added_classes_look_less_like_digits_than_latin_letters_do():
    # Intersection over union with the closest digit: 'O' reaches 0.85 against '0' and 'B'
    # 0.82 against '8'; a symbol or Greek class must stay under 0.8 in every font.
    worst = {}
    for path in glyphs.fonts():
        font = ImageFont.truetype(path, 64)
        digits = [_centred_mask(font, d) for d in string.digits]
        for char in glyphs.SYMBOLS + glyphs.GREEK:
            m = _centred_mask(font, char)
            iou = max((m & d).sum() / (m | d).sum() for d in digits)
            worst[char] = max(worst.get(char, 0.0), iou)
    assert max(worst.values()) < 0.8, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


def test_generation_is_deterministic_and_splits_differ():
    images, labels = glyphs.generate_split("train", n=196)
    assert images.shape == (196, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels, minlength=98), np.full(98, 2))
    again, again_labels = glyphs.generate_split("train", n=196)
    assert images.tobytes() == again.tobytes() and labels.tobytes() == again_labels.tobytes()
    test_images, test_labels = glyphs.generate_split("test", n=196)
    assert not np.array_equal(test_labels, labels)
    assert not np.array_equal(test_images, images)
    with pytest.raises(ValueError, match="validation"):
        glyphs.generate_split("validation")


@pytest.fixture(scope="module")
def small_data_dir(tmp_path_factory):
    """A TFDS data dir holding glyphs built at SMALL sizes."""
    root = tmp_path_factory.mktemp("tfds_glyphs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(glyphs, "SPLIT_SIZES", SMALL)
        assert not catalog.is_prepared("glyphs", root)
        arrays = sources.load_arrays("glyphs", data_dir=str(root))
        assert catalog.is_prepared("glyphs", root)
        expected = glyphs.generate_split("train")
    np.testing.assert_array_equal(arrays["train"][0], expected[0])
    np.testing.assert_array_equal(arrays["train"][1], expected[1])
    assert {split: len(labels) for split, (_, labels) in arrays.items()} == SMALL
    return root


def test_tiny_pretraining_on_glyphs(small_data_dir, tmp_path):
    c = config_lib.load_config_file("demo_pretrain:tiny,glyphs")
    assert (c.config_name, c.data.name) == ("demo_pretrain_glyphs_tiny", "glyphs")
    full = config_lib.load_config_file("demo_pretrain:glyphs").to_dict()
    letters_config = config_lib.load_config_file("demo_pretrain").to_dict()
    differ = {k for k in full if full[k] != letters_config[k]}
    # The data, and the shipped recipe's length (five times the images, 98 classes).
    assert differ == {"config_name", "data", "num_steps", "eval_every", "checkpoint_every"}
    assert full["config_name"] == "demo_pretrain_glyphs" and full["num_steps"] == 10_000
    assert {k for k in full["data"] if full["data"][k] != letters_config["data"][k]} == {"name"}
    c.data.data_dir = str(small_data_dir)
    train.train_and_evaluate(c, str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["dataset"], summary["last"]["step"]) == ("glyphs", 30)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["domain"] for r in rows} == {"train", "test"}  # Trained on train, tested on test.
    _, variables, step = run.restore(tmp_path, "latest")
    assert step == 30
    heads = [x for x in _leaves(variables["params"]) if x.ndim == 2 and x.shape[-1] == 98]
    assert heads  # The classifier has one output per glyph class.


def _leaves(tree: dict) -> list[np.ndarray]:
    """The arrays of a nested dict of parameters."""
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    return [np.asarray(tree)]
