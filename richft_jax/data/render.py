"""SynDigits-style glyph rendering with Pillow, shared by the digits, letters, glyphs builders.

Each glyph is drawn white-on-black at twice the target resolution in a random font and size,
warped by one random affine map (rotation, and for heavy augmentation shear and anisotropic
scale), box-downsampled for antialiasing, then coloured with a random foreground over a random
(possibly gradient) background of sufficient contrast, plus a little noise. All randomness comes
from the `np.random.Generator` passed in, so the output is deterministic given it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Literal

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

Strength = Literal["mild", "heavy"]

# Fonts whose ASCII code points hold symbols or old-style figures rather than plain characters.
_EXCLUDED_FONTS = frozenset({"cmex10.ttf", "cmsy10.ttf", "cmmi10.ttf", "LastResortHE-Regular.ttf"})
_CHUNK = 1024  # Glyphs per thread-pool task.
_NEIGHBOUR_GAP = 0.1  # Gap between neighbouring characters, fraction of the canvas.
_SUPERSAMPLE = 2  # Glyphs are drawn and warped at this multiple of the output size.
_CHECK_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass(frozen=True)
class _Augment:
    """Ranges of the random rendering parameters for one augmentation strength."""

    font_scale: tuple[float, float]  # Font size as a fraction of the canvas side.
    max_rotation: float  # Degrees, uniform in [-max, max].
    max_shear: float  # Horizontal shear factor, uniform in [-max, max].
    aspect: tuple[float, float]  # Horizontal stretch factor range.
    max_shift: float  # Translation slack beyond the centred fit, fraction of the canvas.
    p_thick: float  # Probability of a thicker stroke.
    p_blur: float  # Probability of a Gaussian blur of the glyph mask.
    max_noise: float  # Maximum standard deviation of additive pixel noise (0..255 scale).
    p_gradient: float  # Probability of a linear-gradient background.
    p_neighbours: float  # Probability of partially visible neighbouring characters (SVHN-like).
    min_contrast: float  # Minimum luminance difference between foreground and background.


STRENGTHS: dict[str, _Augment] = {
    "mild": _Augment(
        font_scale=(0.6, 0.95),
        max_rotation=10.0,
        max_shear=0.0,
        aspect=(1.0, 1.0),
        max_shift=0.04,
        p_thick=0.15,
        p_blur=0.15,
        max_noise=4.0,
        p_gradient=0.5,
        p_neighbours=0.3,
        min_contrast=90.0,
    ),
    "heavy": _Augment(
        font_scale=(0.5, 1.0),
        max_rotation=25.0,
        max_shear=0.25,
        aspect=(0.8, 1.2),
        max_shift=0.08,
        p_thick=0.3,
        p_blur=0.3,
        max_noise=16.0,
        p_gradient=0.5,
        p_neighbours=0.0,
        min_contrast=70.0,
    ),
}


def glyph_masks(path: str, chars: str, size: int = 40) -> list[np.ndarray]:
    """Binary 64x64 masks of each character in a font, then of its .notdef glyph (U+FFFF is
    never mapped, so it shows that): what the usable-font check compares."""
    font = ImageFont.truetype(path, size)
    masks = []
    for char in chars + "\uffff":
        image = Image.new("L", (64, 64))
        ImageDraw.Draw(image).text((32, 32), char, font=font, fill=255, anchor="mm")
        masks.append(np.asarray(image) > 127)
    return masks


def renders(path: str, chars: str = _CHECK_CHARS, lookalikes: int = 2) -> bool:
    """Tells whether a font draws a non-blank glyph, not its .notdef box, for every character
    of `chars`, with at most `lookalikes` of them identical to another (I/l in sans-serif)."""
    *glyphs, notdef = glyph_masks(path, chars)
    if any(mask.sum() < 10 or np.array_equal(mask, notdef) for mask in glyphs):
        return False
    return len({mask.tobytes() for mask in glyphs}) >= len(glyphs) - lookalikes


@functools.cache
def font_paths(chars: str = _CHECK_CHARS, lookalikes: int = 2) -> list[str]:
    """Lists matplotlib's bundled TTF fonts that render every one of `chars` properly
    (`renders`); by default the ASCII letters and digits: the digits' and letters' fonts."""
    directory = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    paths = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".ttf") or name in _EXCLUDED_FONTS:
            continue
        path = os.path.join(directory, name)
        if renders(path, chars, lookalikes):
            paths.append(path)
    if not paths:
        raise RuntimeError(f"No TTF font in {directory} renders all of {chars!r}.")
    return paths


@functools.lru_cache(maxsize=4096)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """Loads a font once per (path, size): loading dominates the cost of drawing one glyph."""
    return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=65536)
def _bbox(font: ImageFont.FreeTypeFont, char: str, stroke: int) -> tuple[int, int, int, int]:
    """Caches a glyph's bounding box, which is asked for once per glyph drawn."""
    return font.getbbox(char, stroke_width=stroke)


@functools.lru_cache(maxsize=65536)
def _bitmap(font: ImageFont.FreeTypeFont, char: str, stroke: int) -> Image.Image:
    """Rasterises a glyph once, cropped to its bounding box: FreeType dominates drawing time."""
    left, top, right, bottom = _bbox(font, char, stroke)
    image = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(image).text(
        (-left, -top), char, font=font, fill=255, stroke_width=stroke, stroke_fill=255
    )
    return image


def _contrasting_colours(
    rng: np.random.Generator, n: int, min_contrast: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draws foreground and background RGB colours whose luminances differ enough to read."""
    weights = np.array([0.299, 0.587, 0.114])
    fg = rng.uniform(0, 255, (n, 3))
    bg = rng.uniform(0, 255, (n, 3))
    bad = np.abs((fg - bg) @ weights) < min_contrast
    while bad.any():  # Resample only the failures; the loop is deterministic given the rng.
        k = int(bad.sum())
        fg[bad] = rng.uniform(0, 255, (k, 3))
        bg[bad] = rng.uniform(0, 255, (k, 3))
        bad = np.abs((fg - bg) @ weights) < min_contrast
    return fg, bg


def _glyph_mask(
    char: str,
    font: ImageFont.FreeTypeFont,
    canvas: int,
    stroke: int,
    neighbours: tuple[str, str] | None,
    inverse_affine: Sequence[float],
    blur: float,
) -> Image.Image:
    """Draws one centred glyph (and optional neighbours) and warps it with an affine map."""
    image = Image.new("L", (canvas, canvas))
    left, top, right, bottom = _bbox(font, char, stroke)
    x = round(canvas / 2 - (left + right) / 2)
    y = round(canvas / 2 - (top + bottom) / 2)
    image.paste(255, (x + left, y + top), _bitmap(font, char, stroke))
    if neighbours is not None:
        gap = round(_NEIGHBOUR_GAP * canvas)
        before, after = neighbours
        b_left, b_top, b_right, _ = _bbox(font, before, stroke)
        a_left, a_top, _, _ = _bbox(font, after, stroke)
        # Same baseline as the centre glyph; `before` ends and `after` starts one gap away.
        image.paste(
            255, (x + left - gap - (b_right - b_left), y + b_top), _bitmap(font, before, stroke)
        )
        image.paste(255, (x + right + gap, y + a_top), _bitmap(font, after, stroke))
    image = image.transform(
        (canvas, canvas), Image.Transform.AFFINE, inverse_affine, Image.Resampling.BILINEAR
    )
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return image


def _inverse_affines(
    boxes: np.ndarray,
    shift: np.ndarray,
    angle: np.ndarray,
    shear: np.ndarray,
    aspect: np.ndarray,
    canvas: int,
    max_shift: float,
) -> list[list[float]]:
    """PIL's inverse affine coefficients per glyph: each is shifted (`shift` in [-1, 1]^2) by
    at most the slack its extent (`boxes`, [N, 4]) leaves on the canvas, plus `max_shift`."""
    extent = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    slack = 0.6 * np.maximum(0.0, (canvas - extent) / 2) + max_shift * canvas
    translate = shift * slack[:, None]
    # Forward map: rotation @ [[aspect, shear], [0, 1]] about the canvas centre, then translate.
    # PIL wants the inverse: output pixel p reads input pixel inv @ (p - centre - t) + centre.
    cos, sin = np.cos(angle), np.sin(angle)
    forward = np.stack(
        [
            np.stack([cos * aspect, cos * shear - sin], -1),
            np.stack([sin * aspect, sin * shear + cos], -1),
        ],
        -2,
    )
    inv = np.linalg.inv(forward)
    centre = canvas / 2
    offset = centre - np.einsum("nij,nj->ni", inv, centre + translate)
    return np.concatenate([inv[:, 0], offset[:, :1], inv[:, 1], offset[:, 1:]], -1).tolist()


def render_glyphs(
    chars: Sequence[str],
    rng: np.random.Generator,
    size: int = 32,
    strength: Strength = "mild",
    fonts: Sequence[str] | None = None,
) -> np.ndarray:
    """Renders each character as a random SynDigits-style colour image, uint8 [N, size, size, 3].

    `strength="mild"` (synthetic digits) rotates by at most 10 degrees and sometimes shows
    neighbouring characters as in SVHN; `"heavy"` (letters pretraining) adds shear, stretching,
    25-degree rotations, thicker strokes, blur and stronger noise. `fonts`: the font files
    to draw from, each rendering every character (default `font_paths()`).
    """
    if strength not in STRENGTHS:
        raise ValueError(f"Unknown strength {strength!r}; expected one of {sorted(STRENGTHS)}.")
    aug = STRENGTHS[strength]
    n = len(chars)
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    fonts = font_paths() if fonts is None else list(fonts)
    canvas = _SUPERSAMPLE * size

    # Draw every random parameter up front, vectorised, so the output depends only on the rng.
    font_index = rng.integers(0, len(fonts), n)
    font_size = np.round(canvas * rng.uniform(*aug.font_scale, n)).astype(int)
    thick = rng.random(n) < aug.p_thick
    stroke = np.where(thick, np.maximum(1, np.round(font_size * rng.uniform(0.02, 0.06, n))), 0)
    stroke = stroke.astype(int)
    angle = np.deg2rad(rng.uniform(-aug.max_rotation, aug.max_rotation, n))
    shear = rng.uniform(-aug.max_shear, aug.max_shear, n)
    aspect = rng.uniform(*aug.aspect, n)
    shift = rng.uniform(-1.0, 1.0, (n, 2))
    blur = np.where(rng.random(n) < aug.p_blur, rng.uniform(0.5, 1.5, n), 0.0)
    has_neighbours = rng.random(n) < aug.p_neighbours
    alphabet = sorted(set(chars))
    neighbour_chars = rng.integers(0, len(alphabet), (n, 2))
    fg, bg = _contrasting_colours(rng, n, aug.min_contrast)
    bg2 = np.clip(bg + rng.uniform(-80, 80, (n, 3)), 0, 255).astype(np.float32)
    fg, bg = fg.astype(np.float32), bg.astype(np.float32)
    gradient = rng.random(n) < aug.p_gradient
    gradient_angle = rng.uniform(0, 2 * np.pi, n)
    noise_std = rng.uniform(0, aug.max_noise, n)
    noise_seed = int(rng.integers(0, 2**63 - 1))

    # Glyph extents (cached per font, size, char, stroke) decide how far each may be shifted.
    fonts_used = [_font(fonts[font_index[i]], int(font_size[i])) for i in range(n)]
    boxes = np.array(
        [_bbox(fonts_used[i], chars[i], int(stroke[i])) for i in range(n)], np.float64
    ).reshape(n, 4)
    coeffs = _inverse_affines(boxes, shift, angle, shear, aspect, canvas, aug.max_shift)
    blur_list = blur.tolist()
    stroke_list = stroke.tolist()
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    out = np.empty((n, size, size, 3), np.uint8)

    def render_chunk(chunk: int) -> None:
        """Draws and colours glyphs [chunk * _CHUNK, ...) into `out`; threads share no state."""
        s = slice(chunk * _CHUNK, min(n, (chunk + 1) * _CHUNK))
        masks = np.empty((s.stop - s.start, size, size), np.uint8)
        for j, i in enumerate(range(s.start, s.stop)):
            neighbours = None
            if has_neighbours[i]:
                neighbours = (alphabet[neighbour_chars[i, 0]], alphabet[neighbour_chars[i, 1]])
            mask = _glyph_mask(
                chars[i], fonts_used[i], canvas, stroke_list[i], neighbours, coeffs[i], blur_list[i]
            )
            masks[j] = np.asarray(mask.reduce(_SUPERSAMPLE) if _SUPERSAMPLE > 1 else mask)
        # Flat or linear-gradient background, solid foreground, grey pixel noise.
        cos, sin = np.cos(gradient_angle[s]), np.sin(gradient_angle[s])
        ramp = cos[:, None, None] * xx + sin[:, None, None] * yy
        ramp = np.where(gradient[s, None, None], np.clip(ramp + 0.5, 0, 1), 0).astype(np.float32)
        background = bg[s, None, None, :] + (bg2 - bg)[s, None, None, :] * ramp[..., None]
        alpha = masks[..., None].astype(np.float32) * np.float32(1 / 255)
        images = background + (fg[s, None, None, :] - background) * alpha
        noise_rng = np.random.default_rng([noise_seed, chunk])
        noise = noise_rng.standard_normal(masks.shape, np.float32)
        images += (noise * noise_std[s, None, None])[..., None]
        np.clip(images, 0, 255, out=images)
        out[s] = np.rint(images).astype(np.uint8)

    # Pillow and numpy release the GIL, so threads help; the output is the same for any count.
    num_chunks = -(-n // _CHUNK)
    with concurrent.futures.ThreadPoolExecutor(min(num_chunks, os.cpu_count() or 1)) as pool:
        list(pool.map(render_chunk, range(num_chunks)))
    return out
