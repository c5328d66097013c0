"""Image bytes in and out: format sniffing by content, EXIF orientation, size and pixel limits, fast encodings.

Between pipeline stages images travel as `Pixels`: the raw buffer and its shape, no codec. At 512 px a PNG hop cost
~23 ms to encode and ~8 ms to decode (level 1) for every stage; raw bytes cost nothing to produce and Ray's object
store moves them without a copy. PNG is kept for what leaves the service (stored avatars, cached inputs).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from avatar.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from avatar.vision.png import encode_png

ACCEPTED_FORMATS: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 15 * 2**20        # encoded size
    max_pixels: int = 40_000_000       # decompression-bomb guard (checked from the header, before decoding)
    min_side: int = 200
    max_side: int = 12_000


def sniff_format(data: bytes) -> str | None:
    """The container format from magic bytes: JPEG, PNG, WEBP, or None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def b64decode_image(value: str, field: str = "image") -> bytes:
    """Base64 or `data:image/...;base64,` URI to bytes; errors name the field."""
    payload = value.strip()
    if payload.startswith("data:"):
        header, _, payload = payload.partition(",")
        if ";base64" not in header:
            raise InvalidRequest("data URI must be base64-encoded", field=field, code="invalid_base64")
    payload = "".join(payload.split()).replace("-", "+").replace("_", "/")   # url-safe alphabet too
    try:
        data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image is not valid base64", field=field, code="invalid_base64") from None
    if not data:
        raise InvalidRequest("image is empty", field=field, code="empty_image")
    return data


def decode_photo(data: bytes, limits: DecodeLimits = DecodeLimits(), field: str = "image") -> np.ndarray:
    """Untrusted photo bytes to an upright RGB uint8 array, or a 4xx naming `field` and the reason."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}", field=field)
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType("image must be JPEG, PNG or WebP (recognised by content)", field=field)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = img.size
            _check_dimensions(width, height, limits, field)
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = _to_rgb(img)
            arr = np.asarray(img, dtype=np.uint8)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PayloadTooLarge("image has too many pixels", field=field, code="too_many_pixels") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidRequest(f"image could not be decoded ({fmt.lower()}: {_short(exc)})", field=field,
                                 code="corrupt_image") from None
    return np.ascontiguousarray(arr)


def _check_dimensions(width: int, height: int, limits: DecodeLimits, field: str) -> None:
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise PayloadTooLarge(f"image is {width}x{height}; the limit is {limits.max_pixels} pixels "
                              f"and {limits.max_side} px a side", field=field, code="too_many_pixels")
    if min(width, height) < limits.min_side:
        raise InvalidRequest(f"image is {width}x{height}; at least {limits.min_side}x{limits.min_side} is required",
                             field=field, code="image_too_small")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode in ("I;16", "I", "F"):
        return Image.fromarray((np.asarray(img, dtype=np.float64) / 256).clip(0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _short(exc: BaseException) -> str:
    """The decoder's reason, without object reprs (`<_io.BytesIO object at 0x...>` would leak heap addresses)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a readable image"
    text = _OBJECT_REPR.sub("the image", str(exc)).strip()
    return (text or type(exc).__name__)[:120]


@dataclass(frozen=True)
class Pixels:
    """A uint8 image (H, W) or (H, W, C) as bytes plus shape: what stages hand each other."""

    data: bytes
    shape: tuple[int, ...]

    @classmethod
    def of(cls, image: np.ndarray) -> "Pixels":
        image = np.ascontiguousarray(image, dtype=np.uint8)
        return cls(image.tobytes(), tuple(image.shape))

    @classmethod
    def of_mask(cls, mask: np.ndarray) -> "Pixels":
        """A float 0..1 mask, quantised to 8 bits."""
        return cls.of((np.clip(mask, 0, 1) * 255 + 0.5).astype(np.uint8))

    def array(self) -> np.ndarray:
        """A writable copy (engines may work in place)."""
        return np.frombuffer(self.data, np.uint8).reshape(self.shape).copy()

    def mask(self) -> np.ndarray:
        return np.frombuffer(self.data, np.uint8).reshape(self.shape).astype(np.float32) / 255.0

    @property
    def side(self) -> int:
        return self.shape[0]


def encode_lossless(rgb: np.ndarray) -> bytes:
    """Fast lossless encoding (PNG, low compression): cached inputs."""
    return encode_png(rgb)


def encode_mask(mask: np.ndarray) -> bytes:
    """A float 0..1 mask as an 8-bit PNG."""
    return encode_png((np.clip(mask, 0, 1) * 255 + 0.5).astype(np.uint8))


def decode_trusted(data: bytes) -> np.ndarray:
    """Bytes produced by this service (no limits, no orientation): RGB uint8, or a single-channel uint8 for masks."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    return np.asarray(img)


def decode_mask(data: bytes) -> np.ndarray:
    return decode_trusted(data).astype(np.float32) / 255.0


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
