"""The two person mattes compared: the fast one and the learned one (ISNet) at input sides 320, 512 and 1024.

    python bench/matte.py                           # every figure (needs `avatar models fetch person_matte`)
    python bench/matte.py --sides 512 --skip-cost   # quality only, one side
    python bench/matte.py --save docs/images        # also write the before/after crops of docs/matting.md

Figures:
1. Cost of the learned matte per input side on the aligned 512 px astronaut crop: wall and CPU time of the whole
   matte (ISNet, figure check, guided upsampling, decontamination; median of --repeat), ISNet's share, and the peak
   RSS of a fresh process that loads the model and mattes once (onnxruntime on --threads threads).
2. Edges on a solid backdrop (corporate_headshot, linkedin, background solid, palette neutral_grey) of the packaged
   portraits as taken, on beige curtains and on a lit white wall with a chandelier (tests/portraits.py): the ring
   8-40 px outside the person that is not backdrop (the person: the true alpha of the composites; on the photos as
   taken, the avatar segmented by ISNet at 1024, which understates smears), the true wall between jaw and collar
   that is not backdrop, and what the gate saw (its remnant, attempts, likeness, faces counted).
3. Old background on the vivid walls of tests/walls.py (corporate_headshot, the bench/quality.py measures) for each
   matte: remnants as before.
Every avatar goes through the in-process pipeline (LocalPipeline: the service's stages and retries, no HTTP).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import portraits  # noqa: E402
import walls  # noqa: E402

STYLE, PLATFORM, PALETTE = "corporate_headshot", "linkedin", "neutral_grey"


def engines(sides: list[int]) -> list[tuple[str, dict]]:
    """(label, BgGenerate matting config) per matte: the fast one, then the learned one at each side."""
    out = [("fast", {})]
    out += [(f"learned@{s}", {"learned": {"enabled": True, "input_side": s, "use_for": "all"}}) for s in sides]
    return out


# ------------------------------------------------------------------------------------------------ cost
def cost(sides: list[int], repeat: int, threads: int) -> list[str]:
    from avatar.catalog.platforms import PLATFORMS
    from avatar.vision.face.align import align_face
    from avatar.vision.face.analyzer import FaceAnalyzer
    from avatar.vision.learned_matte import LearnedMatter
    from avatar.vision.matting import LearnedMatteConfig
    with FaceAnalyzer.load() as analyzer:
        photo = portraits.photo("astronaut")
        crop = align_face(photo, analyzer.detect(photo)[0], PLATFORMS[PLATFORM].framing, 512)
    matter = LearnedMatter.load(LearnedMatteConfig(enabled=True, threads=threads))
    lines = []
    try:
        for side in sides:
            one = LearnedMatter(matter.net, LearnedMatteConfig(enabled=True, input_side=side, threads=threads))
            one.matte(crop.image, crop.landmarks)                      # warm-up: onnxruntime plans the new shape
            wall, cpu, net = [], [], []
            for _ in range(repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                matte = one.matte(crop.image, crop.landmarks)
                wall.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
                net.append(matte.timings["segment"])
            lines.append(f"learned@{side:<5d} wall {statistics.median(wall):6.0f} ms (ISNet "
                         f"{statistics.median(net):6.0f})  CPU {statistics.median(cpu):6.0f} ms  peak RSS "
                         f"{peak_rss(side, threads):5.0f} MiB")
    finally:
        matter.close()
    return lines


def peak_rss(side: int, threads: int) -> float:
    """MiB: a fresh interpreter that loads the model and mattes a 512 px crop once at `side`."""
    code = ("import resource, numpy as np; from avatar.vision.learned_matte import LearnedMatter; "
            "from avatar.vision.matting import LearnedMatteConfig; "
            f"m = LearnedMatter.load(LearnedMatteConfig(enabled=True, input_side={side}, threads={threads})); "
            "m.net.alpha(np.zeros((512, 512, 3), np.uint8), m.config.input_side); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return float(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ quality
def avatar(pipeline, photo: np.ndarray, **fields) -> tuple[np.ndarray, object]:
    from PIL import Image

    from avatar.contracts import GenerateRequest
    from avatar.job import PhotoInput
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    job = pipeline.generate(GenerateRequest(image="-", **fields), PhotoInput(data=buf.getvalue()))
    data = pipeline.stages["save_avatar"].storage.get(job.avatar_key)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), job


def edges(analyzer, sides: list[int], save: Path | None) -> tuple[list[str], dict]:
    from avatar.catalog.palettes import PALETTES
    from avatar.flow.local import LocalPipeline
    backdrop = tuple(int(v) for v in PALETTES[PALETTE].base)
    inputs = [portraits.as_taken(n) for n in portraits.NAMES] + \
        [portraits.pasted(n, b) for b in portraits.BACKDROPS for n in portraits.NAMES]
    taken = {c.name for c in inputs[:len(portraits.NAMES)]}
    frames = {c.name: portraits.frame(c, analyzer, PLATFORM, 800) for c in inputs}
    lines, outputs = [], {}
    for label, matting in engines(sides):
        with LocalPipeline(configs={"bg_generate": {"matting": matting}, "load_photo": {"input_cache": False}}) as p:
            cells = []
            for comp in inputs:
                t0 = time.perf_counter()
                out, job = avatar(p, comp.photo, style=STYLE, platform=PLATFORM, background="solid", palette=PALETTE)
                alpha, landmarks = frames[comp.name]
                outputs[(label, comp.name)] = out
                person = portraits.segment(out) if comp.name in taken else alpha > 0.05
                cells.append(f"{portraits.ring_share(out, backdrop, person):6.2%} "
                             f"{portraits.jaw_wall_share(out, backdrop, alpha, landmarks):6.2%} "
                             f"{job.gate.background_remnant:6.2%} {job.attempt} {job.likeness_score:.3f} "
                             f"{job.face_count} {(time.perf_counter() - t0):4.1f}s")
            lines.append(f"{label:12s} " + " | ".join(cells))
    header = " | ".join(f"{c.name:^37s}" for c in inputs)
    sub = " | ".join(f"{'ring':>6s} {'jaw':>6s} {'gate':>6s} a {'like':5s} f {'time':>5s}" for _ in inputs)
    if save is not None:
        save_crops(outputs, frames, save, [label for label, _ in engines(sides)])
    return [f"{'':12s} {header}", f"{'':12s} {sub}", *lines], outputs


def vivid(analyzer, sides: list[int]) -> list[str]:
    from avatar.flow.local import LocalPipeline
    lines = []
    for label, matting in engines(sides):
        with LocalPipeline(configs={"bg_generate": {"matting": matting}, "load_photo": {"input_cache": False}}) as p:
            reference, _ = avatar(p, walls.composite("grey").photo, style=STYLE, platform=PLATFORM)
            cells = []
            for name in walls.WALLS:
                comp = walls.composite(name)
                out, job = avatar(p, comp.photo, style=STYLE, platform=PLATFORM)
                alpha, _ = walls.in_output(comp, analyzer, PLATFORM, out.shape[0])
                cells.append(f"{walls.remnant_share(out, reference, alpha, comp.colours):6.3%}/"
                             f"{walls.edge_fringe(out, reference, alpha, comp.colours):5.2%} a{job.attempt}")
        lines.append(f"{label:12s} " + "  ".join(cells))
    return [f"{'':12s} " + "  ".join(f"{w:^19s}" for w in walls.WALLS), *lines]


# ------------------------------------------------------------------------------------------------ crops for the docs
def save_crops(outputs: dict, frames: dict, folder: Path, labels: list[str]) -> None:
    """Hair (above the head) and shoulder (the side of the neck down to the shoulder) crops, fast beside learned, of
    the astronaut as taken and of Hopper on the white wall, 3x enlarged (nearest) so single pixels show."""
    import cv2
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [labels[0], "learned@512" if "learned@512" in labels else labels[-1]]
    for comp_name, part in (("astronaut_curtains", "hair"), ("hopper_white_wall", "shoulder"),
                            ("astronaut", "shoulder"), ("hopper_curtains", "jaw")):
        _, landmarks = frames[comp_name]
        (x0, y0), (x1, y1) = landmarks.min(axis=0), landmarks.max(axis=0)
        fw, fh, cx = x1 - x0, y1 - y0, (x0 + x1) / 2
        if part == "hair":
            box = (int(cx - 0.9 * fw), int(y0 - 0.75 * fh), int(cx - 0.1 * fw), int(y0 - 0.15 * fh))
        elif part == "jaw":
            box = (int(cx - 1.3 * fw), int(y1 - 0.4 * fh), int(cx - 0.2 * fw), int(y1 + 0.5 * fh))
        else:
            box = (int(cx + 0.35 * fw), int(y1 - 0.2 * fh), int(cx + 1.25 * fw), int(y1 + 0.5 * fh))
        x0b, y0b, x1b, y1b = (max(0, v) for v in box)
        tiles = [cv2.resize(outputs[(label, comp_name)][y0b:y1b, x0b:x1b], None, fx=2, fy=2,
                            interpolation=cv2.INTER_NEAREST) for label in chosen]
        titles = ["fast matte", "learned matte (ISNet, 512)" if chosen[1] == "learned@512" else chosen[1]]
        tiles = [np.vstack([_caption(t, title), t]) for t, title in zip(tiles, titles)]
        gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
        sheet = np.hstack([tiles[0], gap, tiles[1]])
        path = folder / f"matte_{comp_name}_{part}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
        print(f"wrote {path} ({' | '.join(chosen)})")


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    import cv2
    strip = np.full((26, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (40, 40, 40), 1, cv2.LINE_AA)
    return strip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", default="320,512,1024")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-edges", action="store_true")
    parser.add_argument("--skip-vivid", action="store_true")
    parser.add_argument("--save", type=Path, help="write the before/after crops here")
    args = parser.parse_args()
    sides = [int(s) for s in args.sides.split(",")]

    from avatar.vision.face.analyzer import FaceAnalyzer
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    if not args.skip_cost:
        print("\n1. the learned matte per input side (aligned 512 px crop)")
        print("\n".join(cost(sides, args.repeat, args.threads)))
    if args.skip_edges and args.skip_vivid:
        return
    with FaceAnalyzer.load() as analyzer:
        if not args.skip_edges:
            print(f"\n2. edges on a solid backdrop ({STYLE}, {PLATFORM}, solid {PALETTE}): ring 8-40 px outside the "
                  "person and wall between jaw and collar not backdrop (CIE76 > 6); gate remnant; attempts; likeness; "
                  "faces")
            lines, _ = edges(analyzer, sides, args.save)
            print("\n".join(lines))
        if not args.skip_vivid:
            print(f"\n3. old background / edge fringe on the vivid walls ({STYLE}); attempts")
            print("\n".join(vivid(analyzer, sides)))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; peak RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
