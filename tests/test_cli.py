"""The `avatar` command: one avatar in-process, and the model catalogue."""

from __future__ import annotations

import json

from PIL import Image

from cli import main


def test_generate_writes_the_avatar(tmp_path, astronaut, capsys):
    photo = tmp_path / "me.jpg"
    Image.fromarray(astronaut).save(photo, quality=92)
    out = tmp_path / "avatar.png"
    assert main(["generate", str(photo), "--platform", "github", "--resolution", "high", "-o", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    image = Image.open(out)
    assert image.size == (1200, 1200) and image.text["avatar:platform"] == "github"
    assert report["billable"] and report["face_count"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avatar.png", "me.jpg"]   # nothing else left behind


def test_generate_a_transparent_circle(tmp_path, astronaut, capsys):
    photo = tmp_path / "me.png"
    Image.fromarray(astronaut).save(photo)
    out = tmp_path / "avatar.png"
    assert main(["generate", str(photo), "--background", "transparent", "--shape", "circle", "--border-color", "#0a0",
                 "-o", str(out)]) == 0
    image = Image.open(out)
    assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0 and image.getpixel((400, 400))[3] == 255
    assert main(["generate", str(photo), "--border-color", "green", "-o", str(out)]) == 2
    assert json.loads(capsys.readouterr().err)["error"]["field"] == "border_color"


def test_generate_reports_bad_input_as_json(tmp_path, capsys):
    bad = tmp_path / "note.txt"
    bad.write_text("not a photo")
    assert main(["generate", str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "unsupported_media_type"


def test_models_list_names_every_component(capsys):
    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    for component in ("face_detector", "face_landmarks", "person_segmenter", "identity_encoder", "safety_classifier",
                      "upscaler"):
        assert component in listed
