"""Example images for style training: found, validated and decoded before any training worker starts.

Sources: a local directory, a directory URI (`file://`, `s3://`, `gs://`, anything `pyarrow.fs` opens), a Parquet
manifest with an image-path (or image-bytes) column, or uploaded files held in memory. Every problem is reported at
once, naming each bad file, so an account fixes its upload in one go.

Training pairs come from the examples themselves: each example is the target, and its input is a neutralised
(grade removed), re-lit, colour-jittered copy, i.e. what a casual photo of the same scene would look like.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError

from avatar.errors import InvalidRequest
from avatar.tokens import examples_fingerprint

MIN_IMAGES, MAX_IMAGES, MIN_SIDE = 50, 200, 200
PATH_COLUMNS = ("image_path", "path", "image_uri", "uri", "file", "image")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
Image.MAX_IMAGE_PIXELS = 60_000_000   # refuse decompression bombs


class DatasetError(InvalidRequest):
    """The example set cannot be used; `extra["bad_files"]` lists `{"file", "reason"}` for each bad file."""

    code = "invalid_examples"


@dataclass
class ExampleSet:
    names: list[str]
    images: np.ndarray                     # (N, S, S, 3) uint8, resized for training
    hashes: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return examples_fingerprint(self.hashes)


Reader = Callable[[], bytes]


def list_examples(source: str) -> list[tuple[str, Reader]]:
    """(name, reader) per candidate file of `source`, without reading any image yet."""
    if source.lower().endswith(".parquet"):
        return _parquet_entries(source)
    fs, root = _fs(source)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise DatasetError(f"no directory or Parquet manifest at {source!r}", field="images", code="images_not_found")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith("."))
    return [(posixpath.basename(p), _reader(fs, p)) for p in files]


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))


def _reader(fs: pafs.FileSystem, path: str) -> Reader:
    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()
    return read


def _parquet_entries(source: str) -> list[tuple[str, Reader]]:
    import pyarrow.parquet as pq
    fs, path = _fs(source)
    try:
        table = pq.read_table(path, filesystem=fs)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read manifest {source!r}: {exc}", field="images", code="images_not_found") from None
    column = next((c for c in PATH_COLUMNS if c in table.column_names), None)
    if column is None:
        raise DatasetError(f"manifest {source!r} has none of the columns {', '.join(PATH_COLUMNS)}", field="images")
    values = table.column(column).to_pylist()
    base = posixpath.dirname(path)
    entries: list[tuple[str, Reader]] = []
    for i, value in enumerate(values):
        if isinstance(value, (bytes, bytearray)):
            entries.append((f"row {i}", (lambda v=bytes(value): v)))
        elif isinstance(value, str) and value:
            entries.append((value, _manifest_reader(fs, base, value)))
        else:
            entries.append((f"row {i}", _fail_reader("empty image path")))
    return entries


def _manifest_reader(fs: pafs.FileSystem, base: str, value: str) -> Reader:
    if "://" in value:
        other, p = _fs(value)
        return _reader(other, p)
    return _reader(fs, value if value.startswith("/") else posixpath.join(base, value))


def _fail_reader(reason: str) -> Reader:
    def read() -> bytes:
        raise ValueError(reason)
    return read


def load_examples(source: str | Mapping[str, bytes], *, size: int = 96, min_count: int = MIN_IMAGES,
                  max_count: int = MAX_IMAGES, min_side: int = MIN_SIDE) -> ExampleSet:
    """Validate and decode the examples; DatasetError (422) listing every bad file, or the wrong count."""
    if isinstance(source, Mapping):
        entries = [(name, (lambda b=data: b)) for name, data in sorted(source.items())]
    else:
        entries = list_examples(source)
    if len(entries) > max_count:
        raise DatasetError(f"{len(entries)} files given; at most {max_count} example images are accepted",
                           field="images", code="too_many_examples", extra={"count": len(entries)})
    names, images, hashes, bad = [], [], [], []
    for name, read in entries:
        try:
            data = read()
            images.append(_decode(data, min_side, size))
        except (ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            bad.append({"file": name, "reason": _reason(exc)})
            continue
        names.append(name)
        hashes.append(hashlib.sha256(data).hexdigest())
    if bad:
        listing = "; ".join(f"{b['file']}: {b['reason']}" for b in bad)
        raise DatasetError(f"{len(bad)} of {len(entries)} files are not usable images: {listing}",
                           field="images", code="bad_examples", extra={"bad_files": bad})
    if len(images) < min_count:
        raise DatasetError(f"{len(images)} images given; at least {min_count} example images are needed",
                           field="images", code="too_few_examples", extra={"count": len(images)})
    return ExampleSet(names=names, images=np.stack(images), hashes=hashes)


def _decode(data: bytes, min_side: int, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as probe:
        probe.verify()                      # catches truncated and corrupt files cheaply
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        if min(w, h) < min_side:
            raise ValueError(f"{w}x{h} is smaller than {min_side}x{min_side}")
        img.draft("RGB", (size * 2, size * 2))   # JPEG: decode at reduced scale, much faster
        rgb = img.convert("RGB")
        side = min(rgb.size)
        left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BOX)
        return np.asarray(rgb, np.uint8)


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not a decodable image (JPEG, PNG or WebP)"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------- training pairs
def neutralise(x: np.ndarray, strength: float = 1.0, bins: int = 8) -> np.ndarray:
    """Remove the grade: per-brightness colour casts (split toning), global cast, and contrast/exposure styling.

    `x` is (..., H, W, 3) float 0..1. The chroma mean of each brightness band is subtracted (smoothly interpolated
    between bands), then brightness is normalised to a plain mean and spread.
    """
    luma = x @ _LUMA
    chroma = x - luma[..., None]
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    band_cast = np.zeros((bins, 3), np.float32)
    for b in range(bins):
        sel = (luma >= edges[b]) & (luma < edges[b + 1] + (b == bins - 1))
        if sel.sum() > 16:
            band_cast[b] = chroma[sel].mean(axis=0)
    cast = np.stack([np.interp(luma, centres, band_cast[:, c]) for c in range(3)], axis=-1)
    chroma = chroma - strength * cast
    mean, std = float(luma.mean()), float(luma.std()) + 1e-4
    plain = (luma - mean) / std * 0.2 + 0.47
    luma = luma + strength * (plain - luma)
    return np.clip(luma[..., None] + chroma, 0.0, 1.0).astype(np.float32)


def degrade(example: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A casual-photo version of one (H, W, 3) uint8 example: neutralised, re-lit, colour-jittered (float 0..1)."""
    x = neutralise(example.astype(np.float32) / 255.0, strength=float(rng.uniform(0.75, 1.0)))
    h, w = x.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle))
    x = x * (1.0 + rng.uniform(0.0, 0.25) * ramp)[..., None]               # re-lit: a soft light gradient
    x = x * rng.uniform(0.85, 1.15) * rng.uniform(0.94, 1.06, size=3)      # exposure and white balance
    luma = (x @ _LUMA)[..., None]
    x = luma + (x - luma) * rng.uniform(0.8, 1.15)                         # saturation
    return np.clip(x, 0.0, 1.0).astype(np.float32) ** rng.uniform(0.9, 1.1)  # gamma


# ---------------------------------------------------------------- a demo example set
def teal_orange(x: np.ndarray) -> np.ndarray:
    """A strong teal-orange grade on float RGB: teal shadows, orange highlights, S-curve, a little extra saturation."""
    luma = (x @ _LUMA)[..., None]
    x = x + (1 - luma) ** 2 * np.array([-0.10, 0.04, 0.12], np.float32) + luma ** 2 * np.array([0.14, 0.04, -0.10],
                                                                                              np.float32)
    x = 1 / (1 + np.exp(-(x - 0.5) * 6.0))
    x = (x - 1 / (1 + np.exp(3.0))) / (1 / (1 + np.exp(-3.0)) - 1 / (1 + np.exp(3.0)))
    luma = (x @ _LUMA)[..., None]
    return np.clip(luma + (x - luma) * 1.15, 0, 1).astype(np.float32)


def demo_photos(names: tuple[str, ...] = ("chelsea", "coffee", "stereo_motorcycle")) -> list[np.ndarray]:
    """Public-domain photos packaged with scikit-image (a test and demo dependency only)."""
    import skimage.data as data
    photos = []
    for name in names:
        img = getattr(data, name)()
        photos.append(img[0] if isinstance(img, tuple) else img)
    return photos


def make_demo_examples(out_dir: str | Path, count: int = 50, seed: int = 0, size: int = 224,
                       grade: Callable[[np.ndarray], np.ndarray] = teal_orange) -> list[Path]:
    """Write `count` graded JPEG examples (varied crops, exposure and light) of the packaged photos into `out_dir`."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos, paths = demo_photos(), []
    for i in range(count):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.55, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(img[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BILINEAR)
        f = np.asarray(crop, np.float32) / 255.0
        yy = np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None]
        f = np.clip(f * rng.uniform(0.8, 1.2) * (1 + rng.uniform(-0.3, 0.3) * yy)[..., None], 0, 1)
        f = grade(f)[:, ::-1] if i % 2 else grade(f)
        path = out / f"example_{i:03d}.jpg"
        Image.fromarray((f * 255 + 0.5).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths
