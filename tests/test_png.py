"""The PNG encoder of delivered avatars: what any decoder reads back is exactly the pixels and text written."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from avatar.vision.png import encode_png

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("level", [0, 1, 3])
def test_pixels_come_back_exactly_for_every_channel_count_and_level(channels: int, level: int) -> None:
    rng = np.random.default_rng(channels * 10 + level)
    # noise, flat areas and hard steps: every byte difference the Up filter wraps modulo 256
    pixels = rng.integers(0, 256, (37, 53, channels), dtype=np.uint8)
    pixels[10:20] = 255
    pixels[20:25] = 0
    if channels == 1:
        pixels = pixels[..., 0]
    image = _decode(encode_png(pixels, level=level))
    assert image.mode == MODES[channels]
    assert image.size == (53, 37)
    assert np.array_equal(np.asarray(image), pixels)


def test_text_comes_back_latin1_and_unicode() -> None:
    text = {"Software": "avatar-service 1.0", "avatar:style": "studio_é", "avatar:team_style": "东京 look"}
    image = _decode(encode_png(np.zeros((4, 4, 3), np.uint8), text))
    assert {k: image.text[k] for k in text} == text


def test_a_rendered_avatar_compresses() -> None:
    yy, xx = np.mgrid[:400, :400]
    smooth = np.stack([xx * 0.5, yy * 0.5, (xx + yy) * 0.25], -1).astype(np.uint8)
    data = encode_png(smooth)
    assert len(data) < smooth.nbytes / 10
    assert np.array_equal(np.asarray(_decode(data)), smooth)


@pytest.mark.parametrize("pixels, level, match", [
    (np.zeros((4, 4, 3), np.float32), 1, "8-bit"),
    (np.zeros((0, 4, 3), np.uint8), 1, "non-empty"),
    (np.zeros((4, 4, 5), np.uint8), 1, "1-4 channels"),
    (np.zeros((2, 4, 4, 3), np.uint8), 1, "8-bit"),
    (np.zeros((4, 4, 3), np.uint8), 9, "0..3"),
])
def test_what_png_cannot_hold_is_refused_by_name(pixels: np.ndarray, level: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_png(pixels, level=level)
