"""Output quality figures: old background left and edge fringe on portraits composited onto vivid walls, the matting
time per avatar, and face-count accuracy on group photos.

    python bench/quality.py                                  # the default matting method, every figure
    python bench/quality.py --methods guided,closed_form,none  # compare methods ("none" = the coarse mask)
    python bench/quality.py --save /tmp/quality              # also write the avatars and a contact sheet per method

Walls and the reference cut-out: tests/walls.py; group photos: tests/groups.py. Every avatar goes through the
in-process pipeline (LocalPipeline: the service's stages and retries, no HTTP). Remnant: share of the 800 px frame
showing a wall colour where the person is not; fringe: share of the silhouette's edge band with a wall tint (see
tests/walls.py). Times are the best of `--repeat` runs on this machine, with what else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import groups  # noqa: E402
import walls  # noqa: E402

CASES = (("corporate_headshot", "linkedin"), ("anime_character", "discord"), ("editorial_portrait", "portfolio"))


def avatar(pipeline, photo: np.ndarray, style: str, platform: str, **fields) -> tuple[np.ndarray, object]:
    import io

    from PIL import Image

    from avatar.contracts import GenerateRequest
    from avatar.job import PhotoInput
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    job = pipeline.generate(GenerateRequest(image="-", style=style, platform=platform, **fields),
                            PhotoInput(data=buf.getvalue()))
    data = pipeline.stages["save_avatar"].storage.get(job.avatar_key)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), job


def wall_figures(method: str, analyzer, save: Path | None) -> list[dict]:
    from avatar.flow.local import LocalPipeline
    rows = []
    with LocalPipeline(configs={"bg_generate": {"matting": {"method": method}}}) as pipeline:
        sheet = []
        for style, platform in CASES:
            reference, _ = avatar(pipeline, walls.composite("grey").photo, style, platform)
            line = []
            for name in walls.WALLS:
                comp = walls.composite(name)
                out, job = avatar(pipeline, comp.photo, style, platform)
                alpha, _ = walls.in_output(comp, analyzer, platform, out.shape[0])
                rows.append({"method": method, "style": style, "wall": name,
                             "remnant": walls.remnant_share(out, reference, alpha, comp.colours),
                             "fringe": walls.edge_fringe(out, reference, alpha, comp.colours),
                             "attempts": job.attempt, "bg_ms": job.timings.get("bg_generate", 0.0),
                             "gate_remnant": getattr(job.gate, "background_remnant", 0.0)})
                line.append(out)
            sheet.append(np.hstack(line))
        if save is not None:
            _save(save / f"walls_{method}.jpg", np.vstack(sheet), 0.3)
    return rows


def matting_ms(method: str, analyzer, repeat: int) -> tuple[float, float, float, dict[str, float]]:
    """(best wall ms, median wall ms, median CPU ms per matte of a 512 px crop, median wall ms per step) for `method`
    on the wall composites. CPU time is what the matte costs on an idle core; wall time includes waiting for one."""
    from avatar.catalog.platforms import PLATFORMS
    from avatar.vision.face.align import align_face
    from avatar.vision.matting import MattingConfig, PersonMatter
    matter = PersonMatter.load(config=MattingConfig(method=method))
    times, cpu, steps = [], [], {}
    try:
        for name in walls.WALLS:
            photo = walls.composite(name).photo
            crop = align_face(photo, analyzer.detect(photo)[0], PLATFORMS["linkedin"].framing, 512)
            matter.matte(crop.image, crop.landmarks)
            for _ in range(repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                matte = matter.matte(crop.image, crop.landmarks)
                times.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
                for step, ms in matte.timings.items():
                    steps.setdefault(step, []).append(ms)
    finally:
        matter.close()
    return min(times), statistics.median(times), statistics.median(cpu), \
        {k: statistics.median(v) for k, v in steps.items()}


def startup_ms(method: str) -> float:
    """Loading the matter (and warming it up) in a fresh interpreter: what a BgGenerate replica pays once."""
    import subprocess
    code = ("import time; t = time.perf_counter(); from avatar.vision.matting import MattingConfig, PersonMatter; "
            f"PersonMatter.load(config=MattingConfig(method={method!r})); print((time.perf_counter() - t) * 1000)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def face_counts(analyzer, repeat: int) -> tuple[int, int, float, list[str]]:
    exact, total, times, lines = 0, 0, [], []
    for group in groups.groups():
        for _ in range(repeat):
            t0 = time.perf_counter()
            faces = analyzer.detect(group.image)
            times.append((time.perf_counter() - t0) * 1000)
        exact += len(faces) == group.count
        total += 1
        lines.append(f"  {group.name:18s} {group.count} faces, found {len(faces)}")
    return exact, total, statistics.median(times), lines


def _save(path: Path, image: np.ndarray, scale: float) -> None:
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="guided", help="comma-separated: guided, closed_form, none")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--save", type=Path, help="write contact sheets of the avatars here")
    args = parser.parse_args()

    import os

    from avatar.vision.face.analyzer import FaceAnalyzer
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    with FaceAnalyzer.load() as analyzer:
        print("old background on the wall composites (share of the 800 px frame; fringe: share of the edge band)")
        print(f"{'method':12s} {'style':20s} " + " ".join(f"{w:>15s}" for w in walls.WALLS) + "   attempts")
        for method in args.methods.split(","):
            rows = wall_figures(method, analyzer, args.save)
            for style, _ in CASES:
                mine = [r for r in rows if r["style"] == style]
                cells = " ".join(f"{r['remnant']:7.2%}/{r['fringe']:6.2%}" for r in mine)
                print(f"{method:12s} {style:20s} {cells}   {max(r['attempts'] for r in mine)}")
            worst = max(rows, key=lambda r: r["remnant"])
            print(f"{method:12s} worst remnant {worst['remnant']:.2%} ({worst['style']}, {worst['wall']}); worst "
                  f"fringe {max(r['fringe'] for r in rows):.2%}; BgGenerate median "
                  f"{statistics.median(r['bg_ms'] for r in rows):.0f} ms")
        print()
        for method in args.methods.split(","):
            best, median, cpu, steps = matting_ms(method, analyzer, args.repeat)
            parts = ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
            print(f"matting ({method}) per 512 px crop: CPU {cpu:.1f} ms median; wall {best:.1f} ms best, "
                  f"{median:.1f} ms median ({parts}); start-up in a fresh process {startup_ms(method):.0f} ms")
        exact, total, ms, lines = face_counts(analyzer, args.repeat)
        print(f"\nface count: {exact}/{total} group photos counted exactly; detection median {ms:.0f} ms per photo")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
