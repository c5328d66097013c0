"""One team look, measured: the spread across a batch's avatars of eye-line height, face width, mean background
colour and the face region's lightness and colour, without and with lighting matching (`avatar/team.py`).

    .venv/bin/python bench/team_look.py [--style corporate_headshot] [--platform linkedin] [--save /tmp/team]

The batch is the packaged portraits (scikit-image's astronaut, matplotlib's Grace Hopper) and re-lit, colour-cast
copies of each: what a team's photos from different phones and offices look like. Runs in-process (no Ray).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COPIES = {"original": (1.0, (1.0, 1.0, 1.0)), "dim": (0.45, (1.0, 1.0, 1.0)), "bright": (1.6, (1.0, 1.0, 1.0)),
          "warm": (1.0, (1.25, 1.0, 0.7)), "cool": (0.9, (0.75, 0.95, 1.3))}


def photos() -> dict[str, np.ndarray]:
    from matplotlib import cbook
    from skimage import data

    from avatar.team import relit
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        hopper = np.array(Image.open(fh).convert("RGB"))
    people = {"astronaut": data.astronaut(), "hopper": hopper}
    return {f"{who}_{name}": relit(img, exposure, cast) for who, img in people.items()
            for name, (exposure, cast) in COPIES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="corporate_headshot")
    parser.add_argument("--platform", default="linkedin")
    parser.add_argument("--save", default=None, help="folder for the avatars and a side-by-side sheet")
    args = parser.parse_args()

    import tempfile

    from avatar.flow.local import LocalPipeline
    from avatar.job import AvatarJob, PhotoInput
    from avatar.team import look_metrics, spread
    from avatar.vision.face.analyzer import FaceAnalyzer
    batch = photos()
    analyzer = FaceAnalyzer.load()
    looks: dict[bool, dict[str, object]] = {False: {}, True: {}}
    images: dict[bool, list[np.ndarray]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as store, LocalPipeline(configs={
            "save_avatar": {"storage_uri": store}, "load_photo": {"input_cache": False}}) as pipeline:
        for match in (False, True):
            for name, photo in batch.items():
                job = AvatarJob(request_id=f"req_{name}_{int(match)}", style=args.style, platform=args.platform,
                                size=800, intensity=0.6, palette="neutral_grey", background="studio_light",
                                match_lighting=match)
                buf = io.BytesIO()
                Image.fromarray(photo).save(buf, format="PNG")
                done = pipeline.run(job, PhotoInput(data=buf.getvalue()))
                out = np.asarray(Image.open(io.BytesIO(pipeline.stages["save_avatar"].storage.get(
                    done.avatar_key))).convert("RGB"))
                images[match].append(out)
                looks[match][name] = look_metrics(out, analyzer.detect(out)[0].landmarks)
    analyzer.close()
    print(f"{len(batch)} photos (2 people x {len(COPIES)} lighting conditions), style {args.style}, "
          f"platform {args.platform}\n")
    print(f"{'spread':28s} {'without matching':>17s} {'with matching':>14s}")
    groups = {"whole batch": list(batch)} | {who: [n for n in batch if n.startswith(who)]
                                             for who in ("astronaut", "hopper")}
    for group, names in groups.items():
        before = spread([looks[False][n] for n in names])
        after = spread([looks[True][n] for n in names])
        print(f"-- {group}")
        for key in before:
            print(f"   {key:25s} {before[key]:17.3f} {after[key]:14.3f}")
    if args.save:
        folder = Path(args.save)
        folder.mkdir(parents=True, exist_ok=True)
        tile = 160
        sheet = Image.new("RGB", (tile * len(batch), tile * 2), "white")
        for row, match in enumerate((False, True)):
            for col, img in enumerate(images[match]):
                sheet.paste(Image.fromarray(img).resize((tile, tile)), (col * tile, row * tile))
        sheet.save(folder / "team_look.png")
        print(f"\nside by side (top: without, bottom: with matching): {folder / 'team_look.png'}")


if __name__ == "__main__":
    main()
