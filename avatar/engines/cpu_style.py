"""The CPU style engine: three built-in looks made of classic image operations, no generative model.

Identity comes first: every operation changes colour, tone, texture or draws lines, none moves a pixel, so the face
geometry of the output is the input's. `StyleSpec.intensity` scales each operation's strength linearly (0 = the input,
1 = the full look), which is what lets the quality gate retry a failed result more gently.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from avatar.vision.face_regions import FACE_OVAL, face_masks, face_scale, mask_box
from avatar.engines.looks import LOOKS, AnimeLook, CorporateLook, EditorialLook, Look, look_for
from avatar.types import StyleSpec

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


class CpuStyleEngine:
    """Deterministic built-in styles and custom-token looks on an aligned face crop (see `avatar.engines.base`)."""

    name = "cpu"
    version = "1.0.0"

    def __init__(self, **_options: Any) -> None:
        """No options yet; configuration may pass some, so unknown keys are accepted and ignored."""

    def apply(self, image: np.ndarray, landmarks: np.ndarray, spec: StyleSpec) -> np.ndarray:
        t = float(np.clip(spec.intensity, 0.0, 1.0))
        if spec.token:
            return self._apply_token(image, spec.token, t, landmarks)
        if spec.style not in LOOKS:
            raise ValueError(f"unknown style {spec.style!r}; built-in: {', '.join(LOOKS)}")
        return render_look(image, landmarks, look_for(spec.style, spec.extras.get("look")), t)

    def _apply_token(self, image: np.ndarray, token: dict, intensity: float,
                     landmarks: np.ndarray) -> np.ndarray:
        """A custom style: its base look (with `token["params"]` overriding look fields), then its colour map.

        Token keys used (see `avatar.tokens`): `params` (dict: optional `base_style`, default corporate_headshot,
        plus any field of that style's look dataclass) and `lut` ((N, N, N, 3) float 0..1, indexed [r, g, b], applied
        trilinearly). The token's `curve` is already baked into its LUT, so it is not applied again.
        """
        params = dict(token.get("params") or {})
        base = params.pop("base_style", token.get("base_style", "corporate_headshot"))
        out = render_look(image, landmarks, look_for(base, params), intensity)
        if token.get("lut") is None:
            return out
        x = out.astype(np.float32) / 255.0
        graded = apply_lut(x, np.asarray(token["lut"], np.float32))
        return _to_u8(x + (graded - x) * intensity)


def render_look(image: np.ndarray, landmarks: np.ndarray, look: Look, t: float) -> np.ndarray:
    """`image` (uint8 RGB) with `look` applied at strength `t` (0..1)."""
    if t <= 0.0:
        return image.copy()
    x = image.astype(np.float32) / 255.0
    lm = np.asarray(landmarks, np.float32)
    if isinstance(look, CorporateLook):
        return _to_u8(_corporate(x, lm, look, t))
    if isinstance(look, AnimeLook):
        return _to_u8(_anime(x, lm, look, t))
    return _to_u8(_editorial(x, lm, look, t))


# ---------------------------------------------------------------- corporate_headshot
def _corporate(x: np.ndarray, lm: np.ndarray, look: CorporateLook, t: float) -> np.ndarray:
    masks = face_masks(x.shape, lm)
    x = _white_balance(x, masks.face < 0.1, look.white_balance * t, look.wb_max_gain)
    x = _smooth_skin(x, lm, masks.skin * (look.skin_smooth * t), look)
    x = _relight_face(x, lm, masks.face, look.shadow_lift * t, look.fill_light * t)
    x = _saturate(x, 1.0 + (look.saturation - 1.0) * t)
    return (x - 0.5) * (1.0 + (look.contrast - 1.0) * t) + 0.5


def _white_balance(x: np.ndarray, where: np.ndarray, amount: float, max_gain: float) -> np.ndarray:
    """Gray-world over `where` (off the face: skin is not grey, so it must not steer the balance), `amount` of
    the way, gains capped so a strongly coloured scene is not over-corrected."""
    mean = (x[where] if where.any() else x.reshape(-1, 3)).mean(axis=0) + 1e-6
    gains = np.clip(mean.mean() / mean, 1.0 / max_gain, max_gain)
    return x * (1.0 + (gains - 1.0) * amount).astype(np.float32)


def _smooth_skin(x: np.ndarray, lm: np.ndarray, weight: np.ndarray, look: CorporateLook) -> np.ndarray:
    """Edge-preserving smoothing blended in by `weight` (the skin mask), computed on the face box only for speed."""
    box = mask_box(weight, pad=8)
    if box is None:
        return x
    roi = x[box]
    sigma_space = max(look.smooth_sigma_space * max(x.shape[:2]), 1.0)
    smooth = cv2.bilateralFilter(roi, -1, look.smooth_sigma_color / 255.0, sigma_space)
    fine = roi - cv2.GaussianBlur(roi, (0, 0), 1.0)
    smooth = smooth + fine * look.skin_detail
    out = x.copy()
    out[box] = roi + (smooth - roi) * weight[box][..., None]
    return out


def _relight_face(x: np.ndarray, lm: np.ndarray, face: np.ndarray, lift: float, fill: float) -> np.ndarray:
    """Studio key + fill: lift the face's local shadows towards its mean brightness and add a soft frontal fill."""
    fw = face_scale(lm)
    luma = x @ _LUMA
    illum = cv2.GaussianBlur(luma, (0, 0), 0.08 * fw)
    target = float((illum * face).sum() / max(face.sum(), 1.0))
    halo = cv2.GaussianBlur(face, (0, 0), 0.15 * fw)
    add = np.maximum(target - illum, 0.0) * lift * face + fill * halo
    gain = (illum + add) / np.maximum(illum, 1e-3)
    return x * np.clip(gain, 1.0, 2.0)[..., None]


# ---------------------------------------------------------------- anime_character
def _anime(x: np.ndarray, lm: np.ndarray, look: AnimeLook, t: float) -> np.ndarray:
    flat = _flatten(x, int(round(look.smooth_passes)))
    flat = x + (flat - x) * t
    lab = cv2.cvtColor(flat, cv2.COLOR_RGB2Lab)
    light = lab[..., 0] / 100.0
    masks = face_masks(x.shape, lm)
    skin_light = float((light * masks.skin).sum() / max(masks.skin.sum(), 1.0))
    cel = _bands(_shading_light(light, masks.skin, lm, look), skin_light, look) + look.brightness
    chroma = lab[..., 1:] * look.saturation
    chroma = np.round(chroma / look.chroma_step) * look.chroma_step
    lines = _line_art(flat, look, x.shape[0] / 512.0)
    cel = cel * (1.0 - look.line_strength * lines)
    lab[..., 0] = (light + (cel - light) * t) * 100.0
    lab[..., 1:] += (chroma - lab[..., 1:]) * t
    return cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)


def _shading_light(light: np.ndarray, skin: np.ndarray, lm: np.ndarray, look: AnimeLook) -> np.ndarray:
    """The lightness that decides the bands: speckle-free (median), and on skin broad soft shading only."""
    k = max(3, int(round(light.shape[0] / 512.0 * 3)) * 2 + 1)
    regions = cv2.medianBlur(np.round(light * 255).astype(np.uint8), k).astype(np.float32) / 255.0
    broad = cv2.GaussianBlur(light, (0, 0), look.skin_shade_blur * face_scale(lm))
    return regions + (broad - regions) * skin


def _flatten(x: np.ndarray, passes: int) -> np.ndarray:
    """Texture removed, region edges kept: repeated bilateral filtering at half resolution (fast), upsampled."""
    h, w = x.shape[:2]
    small = cv2.resize(x, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    for _ in range(max(passes, 1)):
        small = cv2.bilateralFilter(small, 7, 0.12, 4.0)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _bands(light: np.ndarray, anchor: float, look: AnimeLook) -> np.ndarray:
    """Cel shading: lightness snapped to levels `1 / (bands - 1)` apart, one level on `anchor` (the skin tone, so the
    face is one flat tone), with a short smoothstep between levels. Highlights are rarer and softer than shadows."""
    n = max(look.bands - 1.0, 1.0)
    v = (light - anchor) * n
    v = np.where(v > 0, v * look.highlight_gain, v)
    base = np.floor(v)
    s = np.clip((v - base - 0.5) / max(look.band_softness, 1e-3) + 0.5, 0.0, 1.0)
    q = base + s * s * (3.0 - 2.0 * s)
    return anchor + np.where(q > 0, q * look.highlight_level, q) / n


def _line_art(x: np.ndarray, look: AnimeLook, scale: float) -> np.ndarray:
    """Thin dark lines (0..1) on the dark side of strong edges: a thresholded difference of Gaussians (XDoG)."""
    gray = x @ _LUMA
    sigma = look.line_sigma * scale
    dog = cv2.GaussianBlur(gray, (0, 0), sigma) - cv2.GaussianBlur(gray, (0, 0), sigma * 1.6)
    return np.clip((-dog - look.line_threshold) * look.line_sharpness, 0.0, 1.0)


# ---------------------------------------------------------------- editorial_portrait
def _editorial(x: np.ndarray, lm: np.ndarray, look: EditorialLook, t: float) -> np.ndarray:
    x = x * _key_light(x.shape[:2], lm, look, t)[..., None]
    x = _s_curve(x, 1.0 + (look.contrast - 1.0) * t)
    x = _split_tone(x, look, t)
    x = _saturate(x, 1.0 + (look.saturation - 1.0) * t)
    x = x * _vignette(x.shape[:2], lm, look.vignette * t)[..., None]
    return x + _grain(x, look, t)


def _face_centre(lm: np.ndarray) -> tuple[float, float]:
    oval = lm[list(FACE_OVAL)]
    return float(oval[:, 0].mean()), float(oval[:, 1].mean())


def _key_light(shape: tuple[int, int], lm: np.ndarray, look: EditorialLook, t: float) -> np.ndarray:
    """Horizontal gain: full light on the key side, falling off across the face towards the other side."""
    cx, _ = _face_centre(lm)
    u = (np.arange(shape[1], dtype=np.float32) - cx) / (face_scale(lm) * look.light_width)
    ramp = 0.5 * np.tanh(np.sign(look.light_side or -1.0) * u * 2.0) - 0.3
    gain = 1.0 + look.light_strength * t * ramp
    return np.broadcast_to(gain[None, :], shape).astype(np.float32)


def _s_curve(x: np.ndarray, slope: float) -> np.ndarray:
    """Sigmoid contrast curve through (0,0), (0.5,0.5), (1,1) with the given slope at mid grey."""
    if slope <= 1.0001:
        return x
    ks = np.linspace(1e-3, 12.0, 600)
    k = float(np.interp(slope, 0.5 * ks / np.tanh(0.5 * ks), ks))
    return 0.5 + 0.5 * np.tanh(k * (np.clip(x, 0.0, 1.0) - 0.5)) / np.tanh(0.5 * k)


def _split_tone(x: np.ndarray, look: EditorialLook, t: float) -> np.ndarray:
    """Teal into the shadows, orange into the highlights, weighted by luminance."""
    y = np.clip(x @ _LUMA, 0.0, 1.0)[..., None]
    amount = look.split_tone * t
    shadow = np.asarray(look.shadow_tint, np.float32) * ((1.0 - y) ** 2) * amount
    high = np.asarray(look.highlight_tint, np.float32) * (y ** 2) * amount
    return x + shadow + high


def _vignette(shape: tuple[int, int], lm: np.ndarray, amount: float) -> np.ndarray:
    cx, cy = _face_centre(lm)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    r = np.hypot((xx - cx) / shape[1], (yy - cy) / shape[0]).astype(np.float32)
    return 1.0 - amount * np.clip((r - 0.25) / 0.5, 0.0, 1.0) ** 2


def _grain(x: np.ndarray, look: EditorialLook, t: float) -> np.ndarray:
    """Seeded luminance grain, strongest in the midtones like film."""
    if look.grain * t <= 0.0:
        return np.zeros_like(x)
    rng = np.random.default_rng(int(look.grain_seed))
    noise = rng.standard_normal(x.shape[:2], dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.6) * (look.grain * t * 1.6)
    y = np.clip(x @ _LUMA, 0.0, 1.0)
    return (noise * (4.0 * y * (1.0 - y) + 0.25))[..., None]


# ---------------------------------------------------------------- shared colour operations
def _saturate(x: np.ndarray, factor: float) -> np.ndarray:
    y = (x @ _LUMA)[..., None]
    return y + (x - y) * factor


def apply_lut(x: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Trilinear lookup of float RGB `x` (0..1) in an (N, N, N, 3) table indexed [r, g, b]."""
    n = lut.shape[0]
    pos = np.clip(x, 0.0, 1.0).reshape(-1, 3) * (n - 1)
    i0 = np.minimum(pos.astype(np.int32), n - 2)
    f = pos - i0
    flat = lut.reshape(-1, 3)
    base = (i0[:, 0] * n + i0[:, 1]) * n + i0[:, 2]
    out = np.zeros_like(pos)
    for dr in (0, 1):
        wr = f[:, 0] if dr else 1.0 - f[:, 0]
        for dg in (0, 1):
            wg = wr * (f[:, 1] if dg else 1.0 - f[:, 1])
            for db in (0, 1):
                w = wg * (f[:, 2] if db else 1.0 - f[:, 2])
                out += flat[base + (dr * n + dg) * n + db] * w[:, None]
    return out.reshape(x.shape)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
