"""Digests of the CPU engines' outputs: every built-in style x a few backgrounds and palettes on the astronaut.

Run it before and after a change that must not alter images (a refactor of the style catalogue, say), on the same
machine: OpenCV picks SIMD kernels per CPU, so digests are comparable on one machine, not across machines.

    python bench/style_digest.py --save /tmp/before.json      # before the change
    python bench/style_digest.py --compare /tmp/before.json   # after: lists every case whose pixels changed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCENES = ((None, None), ("bokeh", "navy"), ("gradient", "pastel"), ("neon_geometric", "forest"),
          ("solid", "monochrome"), ("studio_dark", "warm_beige"), ("studio_light", "sunset"))


def _cases(styles: list[str], intensities: dict[str, float]):
    """(name, style, intensity, background, palette, token) for every case, custom tokens included."""
    for style in styles:
        for intensity in (intensities[style], 0.35):
            for background, palette in SCENES:
                yield f"{style}@{intensity}/{background}/{palette}", style, intensity, background, palette, None
    grade = _lut()
    for base in (*styles, None):
        params = {"base_style": base, "contrast": 1.2} if base else {}
        token = {"id": "sty_digest0001", "lut": grade, "params": params, "manifest": {}}
        yield f"token:{base}", "sty_digest0001", 0.8, None, None, token


def _lut(n: int = 9) -> np.ndarray:
    """A warm colour grade: red up, blue down."""
    g = np.linspace(0.0, 1.0, n, dtype=np.float32)
    r, gg, b = np.meshgrid(g, g, g, indexing="ij")
    return np.stack([np.clip(r * 1.1, 0, 1), gg, b * 0.85], -1).astype(np.float32)


def run(size: int, out_size: int) -> dict[str, str]:
    from skimage import data

    from avatar.catalog.platforms import BUILTIN_STYLES, Framing
    from avatar.contracts import GenerateRequest
    from avatar.engines.cpu_background import CpuBackgroundEngine, safer_background
    from avatar.engines.cpu_style import CpuStyleEngine
    from avatar.engines.enhance import DetailEnhancer
    from avatar.types import StyleSpec
    from avatar.vision.face.align import align_face
    from avatar.vision.face.analyzer import FaceAnalyzer
    from avatar.vision.segmentation import PersonSegmenter

    photo = data.astronaut()
    analyzer, segmenter, enhancer = FaceAnalyzer.load(), PersonSegmenter.load(), DetailEnhancer.load()
    try:
        aligned = align_face(photo, analyzer.detect(photo)[0], Framing(), size)
        image, lm = aligned.image, np.asarray(aligned.landmarks, np.float32)
        mask = segmenter.mask(image)
        style_engine, bg_engine = CpuStyleEngine(), CpuBackgroundEngine()
        intensities = {s: GenerateRequest(image="x", style=s).resolved_intensity for s in BUILTIN_STYLES}
        digests: dict[str, str] = {}
        for name, style, intensity, background, palette, token in _cases(list(BUILTIN_STYLES), intensities):
            spec = StyleSpec(style, intensity, palette=palette, background=background, token=token)
            styled = style_engine.apply(image, lm, spec)
            composed = bg_engine.render(styled, mask, lm, spec)
            safer = bg_engine.render(styled, mask, lm, safer_background(spec))
            final = enhancer.enhance(composed, lm, out_size, style).image
            digests[name] = "/".join(hashlib.sha256(a.tobytes()).hexdigest()[:16]
                                     for a in (styled, composed, safer, final))
        return digests
    finally:
        analyzer.close()
        segmenter.close()
        enhancer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="aligned crop side")
    p.add_argument("--out-size", type=int, default=400, help="enhanced output side (> 1.1 x size runs Real-ESRGAN)")
    p.add_argument("--save", type=Path)
    p.add_argument("--compare", type=Path)
    a = p.parse_args()
    start = time.perf_counter()
    digests = run(a.size, a.out_size)
    print(f"{len(digests)} cases (style, composed, safer background, enhanced) in {time.perf_counter() - start:.1f} s")
    if a.save:
        a.save.write_text(json.dumps(digests, indent=1, sort_keys=True))
        print(f"saved to {a.save}")
    if a.compare:
        before = json.loads(a.compare.read_text())
        changed = sorted(k for k in before.keys() | digests.keys() if before.get(k) != digests.get(k))
        for k in changed:
            print(f"CHANGED {k}: {before.get(k)} -> {digests.get(k)}")
        print(f"{len(before)} cases compared, {len(changed)} changed")
        sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
