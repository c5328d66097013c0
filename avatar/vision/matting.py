"""The person matte of the aligned crop: coarse confidence -> consistency checks -> trimap -> alpha -> clean colours.

1. `PersonSegmenter.confidence` (MediaPipe's selfie model, 256 px).
2. `avatar.vision.mask_checks`: the face prior and the border's colour statistics take wall patches and halos away.
3. A trimap at the solve size (256 px): sure person, sure background, and an unknown band around the checked edge
   (wider at higher strictness, and wherever background-like colours touch the edge).
4. Alpha in the band, at the crop's resolution. Two methods (`MattingConfig.method`; "none" keeps the coarse mask):
   - "guided" (default): OpenCV's guided filter (He et al.; `cv2.ximgproc`, in the contrib build mediapipe brings)
     on the checked mask, guided by the crop, clamped to the trimap.
   - "closed_form": Levin et al.'s closed-form matting (`pymatting.estimate_alpha_cf`) at the solve size, brought to
     the crop's resolution by the guided filter. Costs a numba import (seconds) at start-up and more per avatar for
     no measured gain on the test composites (`bench/quality.py`), so it stays an option.
5. Colour decontamination of the edge: the compositing equation I = aF + (1 - a)B solved for F with B, the old
   background, estimated from the nearby sure-background pixels (see `decontaminate`); where alpha is small (F
   ill-conditioned) the colour of the nearby sure-person pixels takes over. Written here because pymatting's
   `estimate_foreground_ml` (the library method) needs numba and cost 20-80 ms at 256 px on these 2 cores, against a
   few ms for this closed-form step, and left more wall tint on the edge in a side-by-side look.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from avatar.vision.mask_checks import MaskCheck, check_mask, strictness
from avatar.vision.segmentation import PersonSegmenter, refine_mask

Method = Literal["guided", "closed_form", "none"]


class LearnedMatteConfig(BaseModel):
    """`BgGenerate.user_config.matting.learned`: off unless `enabled` (licence: docs/matting.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="load the learned matte (opt-in; `avatar models fetch person_matte`)")
    model: str | None = Field(None, description="a path or URL of the ONNX file; default: the pinned catalogue file")
    input_side: int = Field(512, ge=128, le=1536, description="side ISNet runs at (a multiple of 32)")
    threads: int = Field(2, ge=1, le=64, description="onnxruntime intra-op threads on CPU")
    gpu: bool = Field(True, description="use onnxruntime's CUDA provider when it is installed and sees a GPU")
    use_for: str = Field("auto", description="which requests get it: all, async (asynchronous jobs and batch items, "
                                             "plus requests asking quality best), asked (only quality best); "
                                             "auto = all on a GPU, async on CPU")

    @field_validator("input_side")
    @classmethod
    def _multiple_of_32(cls, side: int) -> int:
        if side % 32:
            raise ValueError(f"input_side {side} is not a multiple of 32")
        return side

    @field_validator("use_for")
    @classmethod
    def _known_use(cls, use: str) -> str:
        if use not in ("auto", "all", "async", "asked"):
            raise ValueError(f"use_for {use!r}: one of auto, all, async, asked")
        return use


class MattingConfig(BaseModel):
    """Matting settings (BgGenerate's `user_config.matting`); "none" keeps the coarse feathered mask (no checks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = "guided"
    solve_side: int = Field(256, ge=64, le=1024, description="checks, trimap (and closed-form alpha) run at this side")
    guided_eps: float = Field(1e-3, gt=0, le=1, description="guided filter regularisation: larger = softer edge")
    decontaminate: bool = Field(True, description="solve the edge's colours for the person's own")
    learned: LearnedMatteConfig = Field(default_factory=LearnedMatteConfig,
                                        description="the learned matte (avatar.vision.learned_matte), opt-in")

    @classmethod
    def from_dict(cls, values: dict | None) -> "MattingConfig":
        return cls.model_validate(dict(values or {}))


@dataclass
class Matte:
    """Alpha (H, W) float32 0..1 and the decontaminated person colours (H, W, 3) float32 0..255 of the crop.

    `foreground` equals the crop where alpha is 1, carries the person's own colours on the edge, and extends the
    nearby person colours over the background (what a transparent PNG's hidden RGB should hold).
    """

    alpha: np.ndarray
    foreground: np.ndarray
    check: MaskCheck
    trimap: np.ndarray               # at the solve side: 0 background, 0.5 unknown, 1 person
    level: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class Matter(Protocol):
    """What BgGenerate mattes with: the fast matte below, or the learned one (`avatar.vision.learned_matte`)."""

    name: str

    def matte(self, rgb: np.ndarray, landmarks: np.ndarray | None, level: int = 0) -> Matte: ...

    def close(self) -> None: ...


class PersonMatter:
    """The fast matte: segmenter + checks + matting, loaded once per process (warm-up at load, never per request)."""

    name = "fast"

    def __init__(self, segmenter: PersonSegmenter, config: MattingConfig = MattingConfig()) -> None:
        self.segmenter = segmenter
        self.config = config
        self._warm_up()

    @classmethod
    def load(cls, path: str | Path | None = None, config: MattingConfig | dict | None = None) -> "PersonMatter":
        cfg = config if isinstance(config, MattingConfig) else MattingConfig.from_dict(config)  # type: ignore[arg-type]
        return cls(PersonSegmenter.load(path), cfg)

    @property
    def version(self) -> str:
        return self.config.method

    def _warm_up(self) -> None:
        """Closed-form matting imports numba and compiles on first use (seconds): do it now, at start-up."""
        if self.config.method == "closed_form":
            rgb = np.zeros((32, 32, 3), np.uint8)
            rgb[8:24, 8:24] = 200
            trimap = np.full((32, 32), 0.5)
            trimap[:4], trimap[12:20, 12:20] = 0.0, 1.0
            _closed_form(rgb, trimap)

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """The coarse feathered mask, unchecked (the segmenter's)."""
        return self.segmenter.mask(rgb)

    def matte(self, rgb: np.ndarray, landmarks: np.ndarray | None, level: int = 0) -> Matte:
        """The matte of the aligned crop `rgb` (S, S, 3) uint8, with face `landmarks` (468, 2) in crop pixels."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        conf = self.segmenter.confidence(rgb)
        timings["segment"] = _ms(start)
        if self.config.method == "none":
            alpha = refine_mask(conf, self.segmenter.feather)
            check = MaskCheck(person=alpha > 0.5, prior=None, background_like=np.zeros(alpha.shape, bool), removed=0.0)
            return Matte(alpha, rgb[..., :3].astype(np.float32), check, (alpha > 0.5).astype(np.float64), level,
                         timings)
        return refine(rgb, conf, landmarks, level, self.config, timings)

    def close(self) -> None:
        self.segmenter.close()


def refine(rgb: np.ndarray, conf: np.ndarray, landmarks: np.ndarray | None, level: int = 0,
           config: MattingConfig = MattingConfig(), timings: dict[str, float] | None = None) -> Matte:
    """Checks, trimap, alpha and decontamination of one crop given its coarse confidence `conf` (any size)."""
    timings = {} if timings is None else timings
    h, w = rgb.shape[:2]
    side = min(config.solve_side, max(h, w))
    scale = side / float(max(h, w))
    small = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    small_conf = cv2.resize(conf, (side, side), interpolation=cv2.INTER_AREA)
    lm = None if landmarks is None else np.asarray(landmarks, np.float32)[:, :2] * scale
    start = time.perf_counter()
    check = check_mask(small, small_conf, lm, level)
    trimap = make_trimap(check, level)
    timings["check"] = _ms(start)
    start = time.perf_counter()
    alpha = _snap_8bit(solve_alpha(rgb, small, check, trimap, config))
    timings["alpha"] = _ms(start)
    start = time.perf_counter()
    fg = decontaminate(rgb, alpha) if config.decontaminate else rgb.astype(np.float32)
    timings["decontaminate"] = _ms(start)
    return Matte(alpha=alpha, foreground=fg, check=check, trimap=trimap, level=level, timings=timings)


def _snap_8bit(alpha: np.ndarray) -> np.ndarray:
    """Alpha that rounds to 0 or 255 made exactly 0 or 1: the matte travels between stages as 8 bits, so what the
    next stage sees as opaque must have been treated as opaque here (never decontaminated)."""
    return np.where(alpha >= 254.5 / 255, 1.0, np.where(alpha < 0.5 / 255, 0.0, alpha)).astype(np.float32)


def make_trimap(check: MaskCheck, level: int = 0) -> np.ndarray:
    """0 sure background, 1 sure person, 0.5 unknown: a band of `strictness(level).band` face widths around the
    checked edge, and wherever background-like colours are left inside the person."""
    person = check.person.astype(np.uint8)
    fw = check.prior.face_width if check.prior is not None else 0.1 * max(person.shape)
    r = max(1, int(round(strictness(level).band * fw)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    sure_fg = cv2.erode(person, disk).astype(bool)
    sure_bg = cv2.erode(1 - person, disk).astype(bool)
    sure_fg &= ~check.background_like       # background colours left inside the person: let matting decide
    trimap = np.full(person.shape, 0.5, np.float64)
    trimap[sure_bg] = 0.0
    trimap[sure_fg] = 1.0
    if check.prior is not None:
        trimap[~check.prior.allowed] = 0.0
        trimap[check.prior.face] = 1.0
    return trimap


def solve_alpha(rgb: np.ndarray, small: np.ndarray, check: MaskCheck, trimap: np.ndarray,
                config: MattingConfig) -> np.ndarray:
    """Alpha at the crop's resolution, equal to the trimap where it is sure.

    The colour-guided filter runs at the solve size (2 ms; 17 ms at 512 px for a result within 0.01 mean alpha on
    the edge), then a grey-guided pass at full size snaps the upsampled edge to the crop's own edges (2 ms).
    """
    h, w = rgb.shape[:2]
    fw = check.prior.face_width if check.prior is not None else 0.1 * trimap.shape[0]
    eps = config.guided_eps * 255.0 ** 2
    if config.method == "closed_form":
        alpha = _closed_form(small, trimap).astype(np.float32)
    else:
        alpha = cv2.ximgproc.guidedFilter(small, check.person.astype(np.float32), max(2, int(round(0.08 * fw))), eps)
        alpha = _clamp(alpha, trimap)
    alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)
    alpha = cv2.ximgproc.guidedFilter(grey, alpha, max(1, int(round(h / trimap.shape[0]))), eps * 0.1)
    return _clamp(alpha, cv2.resize(trimap.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST))


def _clamp(alpha: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """Alpha in 0..1, exactly 1 / 0 where the trimap is sure."""
    out = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    out[trimap == 1.0] = 1.0
    out[trimap == 0.0] = 0.0
    return out


def _closed_form(rgb: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    from pymatting import estimate_alpha_cf
    if not ((trimap == 0.5).any() and (trimap == 1.0).any() and (trimap == 0.0).any()):
        return np.clip(trimap, 0.0, 1.0)
    return np.clip(estimate_alpha_cf(rgb.astype(np.float64) / 255.0, trimap), 0.0, 1.0)


# ------------------------------------------------------------------------------------------------ decontamination
def decontaminate(rgb: np.ndarray, alpha: np.ndarray, side: int = 256) -> np.ndarray:
    """The person's own colours (float32 0..255): the crop where alpha is 1, solved colours on the edge, and the
    nearby person colours spread over the background.

    On the edge, F = (I - (1 - a) B) / a, with B the old background spread in from the sure-background pixels and
    `inner` the sure-person colours spread out. The `a` used here leans on the pixel's own colour: its position on the
    line from B to `inner` where that line explains the pixel (a small residual, well separated ends), the matte's
    alpha elsewhere; an alpha a little too high would otherwise leave part of B in F (measured on the magenta wall:
    2.9 % of the edge band kept a wall tint with the matte's alpha, 0.7 % with this). As `a` falls below 0.6 the
    result is blended towards `inner` (F is ill-conditioned there).

    Two guards fall back to a safe mix (a I + (1 - a) inner, the observed colour pulled towards the person's):
    where the old background varies (a striped flag: B is a blend of the stripes there, and solving for F with it
    painted the complement of the red stripes, cyan, on a helmet rim), and where F would end up further from the
    person's nearby colours than the observed pixel is (unmixing must take the old background out, not add its
    complement). The spread colours are smooth, so they are computed at `side` px and resized; the solve runs on
    edge pixels only.
    """
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb[..., :3], (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    a_small = cv2.resize(alpha, (side, side), interpolation=cv2.INTER_AREA)
    inner = cv2.resize(_spread(small, a_small > 0.98), (w, h), interpolation=cv2.INTER_LINEAR)
    out = rgb[..., :3].astype(np.float32)
    np.copyto(out, inner, where=(alpha <= 0.0)[..., None])
    ys, xs = np.nonzero((alpha > 0.0) & (alpha < 0.999))
    if len(ys):
        moments = _spread(np.concatenate([small, small * small], axis=2), a_small < 0.02)
        mean = np.ascontiguousarray(moments[..., :3])
        spread_sd = np.sqrt(np.maximum(moments[..., 3:] - mean * mean, 0.0).sum(axis=2))
        reliable = cv2.resize(np.clip(1.0 - spread_sd / 40.0, 0.0, 1.0), (w, h), interpolation=cv2.INTER_LINEAR)
        background = cv2.resize(mean, (w, h), interpolation=cv2.INTER_LINEAR)[ys, xs]
        person, image, matte = inner[ys, xs], out[ys, xs], alpha[ys, xs, None]
        a = _edge_alpha(image, person, background, matte)
        weight = np.clip((a - 0.15) / 0.45, 0.0, 1.0)
        solved = weight * (image - (1.0 - a) * background) / a + (1.0 - weight) * person
        safe = matte * image + (1.0 - matte) * person
        trust = reliable[ys, xs, None] * np.clip(
            (np.linalg.norm(image - person, axis=1, keepdims=True) + 20.0
             - np.linalg.norm(solved - person, axis=1, keepdims=True)) / 20.0, 0.0, 1.0)
        out[ys, xs] = np.clip(trust * solved + (1.0 - trust) * safe, 0.0, 255.0)
    return out


def _edge_alpha(image: np.ndarray, person: np.ndarray, background: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """(N, 1) alpha for unmixing: the projection of each pixel on its background -> person colour line, trusted as
    far as the line explains the pixel (residual under a quarter of the line's length) and its ends differ (> 30
    levels), else the matte's alpha."""
    line = person - background
    length = np.sqrt((line * line).sum(axis=1, keepdims=True))
    along = np.clip(((image - background) * line).sum(axis=1, keepdims=True) / (length ** 2 + 1e-3), 0.0, 1.0)
    residual = np.sqrt(((image - background - along * line) ** 2).sum(axis=1, keepdims=True))
    trust = np.clip(1.0 - residual / (0.25 * length + 1e-3), 0.0, 1.0) * np.clip(length / 60.0 - 0.5, 0.0, 1.0)
    return np.maximum(trust * along + (1.0 - trust) * matte, 1e-3)


def _spread(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Colours (any number of channels) of the `where` pixels spread into their surroundings by normalised
    convolution over a pyramid: the coarsest level (1/64 of the side) reaches everywhere, finer levels overwrite it
    where they have support, so a reach across the whole crop costs a few small blurs."""
    weight = where.astype(np.float32)
    if not weight.any():
        return np.broadcast_to(image.reshape(-1, image.shape[2]).mean(axis=0), image.shape).astype(np.float32)
    h, w = image.shape[:2]
    num = image * weight[..., None]
    out = None
    for level in (3, 2, 1, 0):
        size = (max(1, w >> (2 * level)), max(1, h >> (2 * level)))
        n = cv2.GaussianBlur(cv2.resize(num, size, interpolation=cv2.INTER_AREA), (0, 0), 4.0).reshape(
            size[1], size[0], -1)
        d = cv2.GaussianBlur(cv2.resize(weight, size, interpolation=cv2.INTER_AREA), (0, 0), 4.0)
        if out is None:
            n, d = n + 1e-12, np.maximum(d, 1e-12)                  # the coarsest level answers everywhere
        level_out = n / np.maximum(d, 1e-12)[..., None]
        if level:
            level_out = cv2.resize(level_out, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
            d = cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR)
        if out is None:
            out = level_out
        else:
            np.copyto(out, level_out, where=(d > 1e-3)[..., None])
    return out


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)


# ------------------------------------------------------------------------------------------------ use in the flow
@dataclass
class PersonLayer:
    """What BgGenerate composites: the styled person with the edge's colours decontaminated, and its alpha."""

    rgb: np.ndarray            # (S, S, 3) uint8
    alpha: np.ndarray          # (S, S) float32 0..1
    matte: Matte | None = None


def person_layer(matter, aligned: np.ndarray, styled: np.ndarray, landmarks: np.ndarray | None,
                 level: int = 0) -> PersonLayer:
    """The person layer of one attempt. The matte is computed on the unstyled `aligned` crop; its colour correction
    (decontaminated minus observed colours, non-zero on the edge only) is carried over to the `styled` crop, whose
    edge pixels mix the style's person with the old background just like the input's. A plain segmenter (no
    `matte`) gives its coarse mask and no correction."""
    if not hasattr(matter, "matte"):
        return PersonLayer(styled, matter.mask(aligned))
    matte = matter.matte(aligned, landmarks, level)
    edge = (matte.alpha > 0.0) & (matte.alpha < 0.999)
    rgb = styled.astype(np.float32)
    rgb[edge] += matte.foreground[edge] - aligned[..., :3][edge].astype(np.float32)
    return PersonLayer(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), matte.alpha, matte)


def fill_hidden(rgb: np.ndarray, alpha: np.ndarray, side: int = 128) -> np.ndarray:
    """`rgb` with the colours under alpha 0 replaced by the nearby person colours spread out: what a transparent
    PNG's invisible pixels should hold, so resampling by a platform never pulls another colour into the edge."""
    small = cv2.resize(rgb[..., :3], (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    a_small = cv2.resize(alpha, (side, side), interpolation=cv2.INTER_AREA)
    spread = cv2.resize(_spread(small, a_small > 0.98), rgb.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    out = rgb[..., :3].copy()
    hidden = alpha <= 0.0
    out[hidden] = np.clip(spread[hidden] + 0.5, 0, 255).astype(np.uint8)
    return out


def alpha_at(alpha: np.ndarray, size: int) -> np.ndarray:
    """The work-size alpha at the avatar's size (cubic, clipped)."""
    if alpha.shape[0] == size:
        return alpha.astype(np.float32)
    return np.clip(cv2.resize(alpha.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def over_grey(rgb: np.ndarray, alpha: np.ndarray, grey: int = 128) -> np.ndarray:
    """A transparent avatar flattened on mid-grey, for checks that need an opaque picture (detectors, safety)."""
    a = alpha_at(alpha, rgb.shape[0])[..., None]
    return np.clip(rgb[..., :3].astype(np.float32) * a + grey * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
