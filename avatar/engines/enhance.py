"""DetailEnhance: the composed crop brought to the platform's output size with a face that holds up at that size.

The whole image is resized with Lanczos. The face is what viewers look at, so when the output needs more face pixels
than the crop has, only the face region goes through Real-ESRGAN (animevideov3 x4, ncnn on the CPU) at a small input
size (80 px: 0.7x the time of 96 px, a third of 128 px, no less face sharpness by the eval's measure, mean pixel
difference under 0.45/255; README, Performance), and only its finest detail is blended back with a feathered mask.
Then eyes, brows and lips get an unsharp mask, colour casts on the skin are gently corrected, and the per-style depth
of field softens what lies away from the face. Each style's strengths are its catalogue entry's `enhance`
(`avatar.catalog.styles`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatar.catalog.styles import enhance_look
from avatar.vision.face_regions import (FACE_OVAL, face_masks, face_scale, feature_mask, mask_box, polygon_mask,
                                       scale_landmarks)

UPSCALER_NAME = "realesr-animevideov3-x4"

# Plausible skin hue range (Lab hue angle, degrees) across skin tones; means outside it are a colour cast.
SKIN_HUE_RANGE: tuple[float, float] = (35.0, 70.0)


@dataclass
class Enhanced:
    """The enhanced image and what ran, for the result's metadata.

    `upscaler_used`: the super-resolution model's name when the face went through it, else None.
    `landmarks`: the input landmarks in output pixels. `steps`: the operations that ran, in order.
    """

    image: np.ndarray
    upscaler_used: str | None
    landmarks: np.ndarray
    steps: tuple[str, ...]


class DetailEnhancer:
    """Upscale + face detail; the Real-ESRGAN network is loaded once and reused (the object is not thread-safe)."""

    def __init__(self, net: Any | None = None, esr_max_input: int = 80, min_face_upscale: float = 1.1,
                 threads: int = 1) -> None:
        self._net = net
        self.esr_max_input = esr_max_input          # ESRGAN input side cap: cost grows with its square
        self.min_face_upscale = min_face_upscale    # run ESRGAN when the face is enlarged by more than this
        self.threads = threads

    @classmethod
    def load(cls, param_path: str | Path | None = None, **options: Any) -> "DetailEnhancer":
        """Load the ncnn network (`param_path` or the cached catalogue file; its `.bin` lies beside it)."""
        import ncnn

        from avatar.store.models import resolve
        param = Path(param_path or resolve("upscaler"))
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = int(options.get("threads", 1))
        if net.load_param(str(param)) != 0 or net.load_model(str(param.with_suffix(".bin"))) != 0:
            raise RuntimeError(f"could not load the upscaler from {param}")
        enhancer = cls(net, **options)
        enhancer._run_net(np.zeros((32, 32, 3), np.uint8))   # warm-up: the first inference prepares the weights
        return enhancer

    def enhance(self, image: np.ndarray, landmarks: np.ndarray, size: int, style: str) -> Enhanced:
        """`image` (S, S, 3) uint8 to (size, size, 3) uint8 with the face detail steps of `style`."""
        look = enhance_look(style)
        factor = size / image.shape[0]
        out = cv2.resize(image, (size, size), interpolation=cv2.INTER_LANCZOS4).astype(np.float32)
        lm = scale_landmarks(landmarks, factor)
        steps = ["lanczos"]
        used = None
        if self._net is not None and factor >= self.min_face_upscale and look.esr_blend > 0:
            out = self._face_superres(image, out, np.asarray(landmarks, np.float32), lm, look.esr_blend)
            used, steps = UPSCALER_NAME, steps + ["face_superres"]
        if look.skin_tone > 0:   # the skin mask only where it is used (anime leaves skin tones alone)
            out, steps = correct_skin_tone(out, face_masks(out.shape, lm).skin, look.skin_tone), steps + ["skin_tone"]
        if look.feature_sharpen > 0:
            out, steps = sharpen_features(out, lm, look.feature_sharpen, factor), steps + ["feature_sharpen"]
        if look.dof_blur > 0:
            out, steps = depth_of_field(out, lm, look.dof_blur * size), steps + ["depth_of_field"]
        image_out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        return Enhanced(image=image_out, upscaler_used=used, landmarks=lm, steps=tuple(steps))

    def _face_superres(self, image: np.ndarray, out: np.ndarray, lm_in: np.ndarray, lm_out: np.ndarray,
                       blend: float) -> np.ndarray:
        """Real-ESRGAN on the face box only (downsampled to `esr_max_input`), feather-blended into `out`.

        Only the network's detail above what the crop itself resolves is added (the Lanczos image keeps the true
        lower frequencies), so a downsampled network input never costs real detail and colours stay the style's.
        """
        x0, y0, x1, y1 = _face_box(lm_in, image.shape[:2], margin=0.25)
        crop = image[y0:y1, x0:x1]
        scale = min(1.0, self.esr_max_input / max(crop.shape[:2]))
        small = cv2.resize(crop, (max(int(crop.shape[1] * scale), 1), max(int(crop.shape[0] * scale), 1)),
                           interpolation=cv2.INTER_AREA)
        sr = self._run_net(small)
        f = out.shape[0] / image.shape[0]
        ox0, oy0 = int(round(x0 * f)), int(round(y0 * f))
        ox1, oy1 = min(int(round(x1 * f)), out.shape[1]), min(int(round(y1 * f)), out.shape[0])
        sr = cv2.resize(sr, (ox1 - ox0, oy1 - oy0), interpolation=cv2.INTER_AREA).astype(np.float32)
        detail = sr - cv2.GaussianBlur(sr, (0, 0), 0.6 * f)
        oval = polygon_mask(out.shape, lm_out, (FACE_OVAL,), feather=0.06 * face_scale(lm_out))   # = face_masks().face
        weight = oval[oy0:oy1, ox0:ox1, None] * (blend * 1.5)
        out[oy0:oy1, ox0:ox1] += detail * weight
        return out

    def _run_net(self, rgb: np.ndarray) -> np.ndarray:
        import ncnn
        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0
        ex = self._net.create_extractor()
        ex.input("data", ncnn.Mat(chw))
        _, result = ex.extract("output")
        return np.clip(np.array(result).transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def close(self) -> None:
        self._net = None


def _face_box(lm: np.ndarray, shape: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    oval = lm[list(FACE_OVAL)]
    pad = margin * face_scale(lm)
    x0, y0 = np.floor(oval.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(oval.max(axis=0) + pad).astype(int)
    return max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])


def sharpen_features(x: np.ndarray, lm: np.ndarray, amount: float, factor: float = 1.0) -> np.ndarray:
    """Unsharp mask on eyes, brows and lips only (where viewers judge sharpness); skin keeps its smoothness."""
    weight = feature_mask(x.shape, lm, grow=0.04, feather=0.02)
    box = mask_box(weight, pad=8)
    if box is None:
        return x
    region = x[box]
    detail = region - cv2.GaussianBlur(region, (0, 0), max(1.0, 0.9 * factor))
    out = x.copy()
    out[box] = region + detail * (amount * weight[box][..., None])
    return out


def correct_skin_tone(x: np.ndarray, skin: np.ndarray, amount: float) -> np.ndarray:
    """Rotate the skin's mean Lab hue back into the plausible skin range (a green or blue cast), keeping lightness
    and chroma, so no skin tone is made lighter, darker or more saturated."""
    box = mask_box(skin)
    if box is None or skin.sum() < 16:
        return x
    lab = cv2.cvtColor(np.clip(x[box] / 255.0, 0, 1).astype(np.float32), cv2.COLOR_RGB2Lab)
    weight = skin[box]
    w = weight / weight.sum()
    hue = float(np.degrees(np.arctan2((lab[..., 2] * w).sum(), (lab[..., 1] * w).sum())))
    turn_deg = (float(np.clip(hue, *SKIN_HUE_RANGE)) - hue) * amount
    if abs(turn_deg) < 1e-3:
        return x
    turn = np.radians(turn_deg) * weight
    cos, sin = np.cos(turn), np.sin(turn)
    a, b = lab[..., 1].copy(), lab[..., 2].copy()
    lab[..., 1] = a * cos - b * sin
    lab[..., 2] = a * sin + b * cos
    out = x.copy()
    out[box] = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255.0
    return out


def depth_of_field(x: np.ndarray, lm: np.ndarray, sigma: float) -> np.ndarray:
    """Blur growing with distance from the face (a shallow focus on the eyes); blur and weights at quarter size."""
    h, w = x.shape[:2]
    sh, sw = max(h // 4, 1), max(w // 4, 1)
    small = cv2.resize(x, (sw, sh), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (0, 0), max(sigma / 4.0, 0.5))
    cx, cy = lm[list(FACE_OVAL)].mean(axis=0) / 4.0
    fw = face_scale(lm) / 4.0
    yy, xx = np.ogrid[:sh, :sw]
    r = np.hypot((xx - cx) / (0.9 * fw), (yy - cy) / (1.2 * fw)).astype(np.float32)
    k = np.clip(r - 0.75, 0.0, 1.0)
    k = cv2.resize(k * k * (3.0 - 2.0 * k), (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    up = cv2.resize(blurred, (w, h), interpolation=cv2.INTER_LINEAR)
    up -= x          # x + (up - x) * k, computed in the fresh `up` buffer: no full-size temporaries
    up *= k
    up += x
    return up
