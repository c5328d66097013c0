"""`avatar batch` on a small folder through Ray Data on the session's local Ray: avatars named after the photos, a
results Parquet file with the bad photos reported (not fatal), and a resumed run that skips what is already written."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, astronaut):
    from matplotlib import cbook
    from skimage import data
    src = tmp_path_factory.mktemp("photos")
    (src / "team").mkdir()
    Image.fromarray(astronaut).save(src / "eileen.jpg", quality=92)
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        (src / "team" / "grace.jpg").write_bytes(fh.read())
    Image.fromarray(data.coffee()).save(src / "coffee.png")                     # no face
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG")
    (src / "broken.jpg").write_bytes(buf.getvalue()[:2000])                   # corrupt
    (src / "notes.txt").write_text("not a photo")                             # ignored
    return src


def test_a_folder_through_ray_data_then_resumed(folder, ray_session, tmp_path):
    from batch.directory import BatchOptions, read_results, run
    out = tmp_path / "out"
    options = BatchOptions(platform="linkedin", palette="neutral_grey", actors=2, cpus_per_actor=1, batch_size=2)
    first = run(str(folder), str(out), options, progress=False)
    assert (first.total, first.skipped, first.succeeded, first.failed) == (4, 0, 2, 2)
    table = read_results(str(out)).to_pylist()
    rows = {r["external_id"]: r for r in table}
    assert set(rows) == {"eileen", "team/grace", "coffee", "broken"}
    assert rows["coffee"]["state"] == "failed" and rows["coffee"]["error_code"] == "no_face_detected"
    assert rows["broken"]["state"] == "failed" and rows["broken"]["error_code"]
    assert rows["eileen"]["billable"] and rows["eileen"]["likeness"] > 0.8
    avatar = Image.open(out / "avatars" / "team" / "grace.png")
    assert avatar.size == (800, 800) and avatar.text["avatar:platform"] == "linkedin"
    assert Image.open(out / "thumbnails" / "eileen.png").size == (100, 100)
    written = {p: p.stat().st_mtime_ns for p in (out / "avatars").rglob("*.png")}

    again = run(str(folder), str(out), options, progress=False)     # resumable: only the missing ones run
    assert (again.skipped, again.succeeded, again.failed) == (2, 0, 2)
    assert {p: p.stat().st_mtime_ns for p in (out / "avatars").rglob("*.png")} == written
    assert len(read_results(str(out))) == 6 and len({r["run_id"] for r in read_results(str(out)).to_pylist()}) == 2


def test_the_cli_validates_the_team_look_before_starting(folder, tmp_path, capsys):
    from cli import main
    assert main(["batch", str(folder), "--out", str(tmp_path / "o"), "--palette", "plaid", "--quiet",
                 "--num-cpus", "1"]) == 2
    assert json.loads(capsys.readouterr().err)["error"]["field"] == "palette"
    assert not (tmp_path / "o" / "avatars").exists()


def test_the_actor_pool_always_leaves_room_for_reading():
    from batch.directory import READ_CPUS, BatchOptions, actor_cpus
    assert actor_cpus(BatchOptions(actors=2, cpus_per_actor=1.0), 8) == 1.0
    assert 2 * actor_cpus(BatchOptions(actors=2, cpus_per_actor=1.0), 2) + READ_CPUS <= 2


def test_the_rayjob_manifest_runs_a_valid_batch_command():
    import shlex
    from pathlib import Path

    import yaml

    from cli import build_parser
    manifest = yaml.safe_load((Path(__file__).resolve().parent.parent / "k8s" / "rayjob-batch.yaml").read_text())
    assert manifest["kind"] == "RayJob" and manifest["spec"]["shutdownAfterJobFinishes"]
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "cli"]
    args = build_parser().parse_args(argv[3:])
    assert args.func.__name__ == "_cmd_batch" and args.source.startswith("s3://") and args.out.startswith("s3://")
