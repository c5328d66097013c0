"""The learned person matte: ISNet's alpha (`avatar.vision.isnet`), kept to the person, brought to the crop's size.

Where the fast matte (`avatar.vision.matting.PersonMatter`) draws its edge from a 256 px person confidence and colour
statistics, ISNet predicts the alpha itself from the image, hair strands included, and tells a lit wall from a
shadowed neck by shape rather than by colour. Steps, on the aligned crop:

1. ISNet at `input_side` (320, 512 or 1024; `bench/matte.py` measures each).
2. Kept to one head-and-shoulders figure: alpha outside the face prior's allowed zone (`mask_checks.person_prior`:
   wall beside and above the head) and on islands not connected to the face (a chandelier, a second person) is 0.
   ISNet segments the salient object, which is usually, but not always, only the person.
3. Guided upsampling (He et al.'s guided filter, `cv2.ximgproc`, on the crop's grey levels) to the crop's size when
   the network ran smaller than the crop: the edge follows the crop's own edges instead of the bilinear staircase.
4. The same edge colour decontamination as the fast matte (`matting.decontaminate`).

A stricter level (the gate's retry after old background showed) drops the faint end of the alpha (below 0.1 per
level), which is where a haze of old background would sit.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from avatar.vision.mask_checks import MaskCheck, person_prior
from avatar.vision.matting import LearnedMatteConfig, Matte, _ms, _snap_8bit, decontaminate

SOLVE_SIDE = 256          # the prior, the island check and the decision map the gate reads run at this side


class LearnedMatter:
    """ISNet behind the matter interface (`matte(rgb, landmarks, level) -> Matte`), loaded once per process."""

    name = "learned"

    def __init__(self, net, config: LearnedMatteConfig = LearnedMatteConfig()) -> None:
        self.net = net
        self.config = config

    @classmethod
    def load(cls, config: LearnedMatteConfig | dict | None = None, source: str | Path | None = None
             ) -> "LearnedMatter":
        from avatar.vision.isnet import IsNet
        cfg = config if isinstance(config, LearnedMatteConfig) else LearnedMatteConfig.model_validate(config or {})
        return cls(IsNet.load(source or cfg.model, threads=cfg.threads, gpu=cfg.gpu), cfg)

    @property
    def version(self) -> str:
        return f"isnet@{self.config.input_side}"

    @property
    def on_gpu(self) -> bool:
        return bool(getattr(self.net, "on_gpu", False))

    def matte(self, rgb: np.ndarray, landmarks: np.ndarray | None, level: int = 0) -> Matte:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        raw = self.net.alpha(rgb, self.config.input_side)
        timings["segment"] = _ms(start)
        start = time.perf_counter()
        small = cv2.resize(raw, (SOLVE_SIDE, SOLVE_SIDE), interpolation=cv2.INTER_AREA)
        check = _check(small, landmarks, SOLVE_SIDE / float(rgb.shape[0]))
        keep = cv2.resize(cv2.GaussianBlur(check.person.astype(np.float32), (0, 0), 1.0), raw.shape[::-1],
                          interpolation=cv2.INTER_LINEAR)
        alpha = stricter(raw * np.clip(keep * 2.0 - 0.5, 0.0, 1.0), level)   # 1 on the figure, 0 off it
        timings["check"] = _ms(start)
        start = time.perf_counter()
        alpha = _snap_8bit(guided_resize(alpha, rgb))
        timings["alpha"] = _ms(start)
        start = time.perf_counter()
        fg = decontaminate(rgb, alpha)
        timings["decontaminate"] = _ms(start)
        trimap = np.where(check.person & (small > 0.98), 1.0, np.where(check.person & (small > 0.02), 0.5, 0.0))
        return Matte(alpha=alpha, foreground=fg, check=check, trimap=trimap, level=level, timings=timings)

    def close(self) -> None:
        close = getattr(self.net, "close", None)
        if callable(close):
            close()


def _check(alpha: np.ndarray, landmarks: np.ndarray | None, scale: float) -> MaskCheck:
    """The figure at the solve side: alpha > 0.5 inside the face prior's allowed zone, connected to the face."""
    person = alpha > 0.5
    prior = None
    if landmarks is not None and len(landmarks):
        prior = person_prior(alpha.shape, np.asarray(landmarks, np.float32)[:, :2] * scale)
        person &= prior.allowed
        labels, count = ndimage.label(person)
        if count > 1:
            ids = np.unique(labels[prior.face & person])
            if len(ids[ids > 0]):
                person = np.isin(labels, ids[ids > 0])
    return MaskCheck(person=person, prior=prior, background_like=np.zeros_like(person),
                     removed=float(((alpha > 0.5) & ~person).mean()))


def stricter(alpha: np.ndarray, level: int) -> np.ndarray:
    """`alpha` with its faint end (below 0.1 per level) dropped and the rest stretched back to 0..1."""
    if level <= 0:
        return alpha
    floor = min(0.1 * level, 0.5)
    return np.clip((alpha - floor) / (1.0 - floor), 0.0, 1.0).astype(np.float32)


def guided_resize(alpha: np.ndarray, rgb: np.ndarray, radius: int = 1, eps: float = 1e-3) -> np.ndarray:
    """`alpha` at the crop's size: area-averaged when the network ran larger; guided upsampling when it ran smaller.

    Guided upsampling (He and Sun's fast guided filter): the filter's linear coefficients (alpha ~ a * grey + b in
    each window) are fitted at the network's resolution against the crop's grey levels brought to it, upsampled, and
    applied to the crop's own grey levels, so the edge lands where the crop's edge is instead of on the bilinear
    staircase. Only within one network pixel of an edge of the network's alpha: a window straddling an edge fits it only
    in part, and applied everywhere the coefficients would lay a faint haze on both sides of the edge.
    """
    h, w = rgb.shape[:2]
    side = alpha.shape[0]
    if alpha.shape == (h, w):
        return alpha.astype(np.float32)
    if side > h:
        return cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    small = cv2.resize(grey, (alpha.shape[1], side), interpolation=cv2.INTER_AREA)
    box = (2 * radius + 1, 2 * radius + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, box, borderType=cv2.BORDER_REFLECT)

    m_i, m_a = mean(small), mean(alpha)
    a = (mean(small * alpha) - m_i * m_a) / (mean(small * small) - m_i * m_i + eps)
    b = m_a - a * m_i
    coef_a, coef_b = (cv2.resize(mean(c), (w, h), interpolation=cv2.INTER_LINEAR) for c in (a, b))
    up = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    kernel = np.ones((3, 3), np.uint8)
    unsure = (cv2.dilate(alpha, kernel) - cv2.erode(alpha, kernel)) > 0.04    # an edge within one network pixel
    band = cv2.resize(unsure.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    out = np.where(band, coef_a * grey + coef_b, up)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
