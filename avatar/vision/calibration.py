"""Likeness: an identity model's embedding distance mapped to a 0..1 score whose thresholds mean something measured.

likeness(d) = 1 / (1 + exp(slope * (d - midpoint))), monotonic decreasing in the distance d. Each identity model
(`avatar.vision.identity`) has its own two parameters, in `avatar/data/likeness_calibration.json` (dlib) and
`avatar/data/likeness_calibration_sface.json` (SFace), written by `bench/likeness_calibration.py --fit --model ...`
together with the pairs they were fitted on. The fit pins the curve at the model's published operating point
(likeness 0.60, the gaming minimum: dlib's accept line, distance 0.60, 99.38% on LFW; SFace's, cosine 0.363 =
distance 0.637, 99.32% on LFW for the quantised build) and fits the slope by logistic regression on measured
same-person / different-person distances, capped so that the top of the same-person range on real photos scores 0.9.
So the tier minimums read alike for both models: 0.60 = the model would still accept the match, 0.75 / 0.85 =
progressively clearer matches, 0.9 = as close as different photos of the same face. See docs/likeness.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CALIBRATION_PATH = Path(__file__).parents[1] / "data" / "likeness_calibration.json"   # dlib's
_CALIBRATIONS = {"dlib": CALIBRATION_PATH, "sface": CALIBRATION_PATH.with_name("likeness_calibration_sface.json")}


def calibration_path(model: str) -> Path:
    """Where the curve of identity model `model` ("dlib", "sface") is stored."""
    try:
        return _CALIBRATIONS[model]
    except KeyError:
        raise ValueError(f"no likeness calibration for identity model {model!r}") from None


@dataclass(frozen=True)
class LikenessCurve:
    """A decreasing logistic in the descriptor distance."""

    slope: float
    midpoint: float

    def __call__(self, distance: float) -> float:
        z = self.slope * (float(distance) - self.midpoint)
        if z > 50:   # keep exp() in range; the score is 0 to float precision there anyway
            return 0.0
        return 1.0 / (1.0 + math.exp(z))

    def distance_for(self, likeness: float) -> float:
        """The distance at which the score equals `likeness` (the inverse), for documenting thresholds."""
        p = min(max(likeness, 1e-9), 1 - 1e-9)
        return self.midpoint + math.log((1 - p) / p) / self.slope

    @classmethod
    def through(cls, slope: float, distance: float, likeness: float) -> LikenessCurve:
        """The curve with `slope` that passes through (distance, likeness)."""
        return cls(slope=slope, midpoint=distance - math.log((1 - likeness) / likeness) / slope)


@lru_cache(maxsize=4)
def load_curve(path: str | Path = CALIBRATION_PATH) -> LikenessCurve:
    """The fitted curve stored in `path`."""
    params = json.loads(Path(path).read_text())["parameters"]
    return LikenessCurve(slope=float(params["slope"]), midpoint=float(params["midpoint"]))


def likeness_from_distance(distance: float | None, curve: LikenessCurve | None = None) -> float:
    """0..1 likeness for a descriptor distance; a face that could not be measured (None) scores 0."""
    if distance is None or not math.isfinite(distance):
        return 0.0
    return (curve or load_curve())(max(0.0, distance))
