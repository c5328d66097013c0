"""Face stage on the real astronaut photo and transformed copies of it, with the real detector and mesh models."""

from __future__ import annotations

import dataclasses
import math
import time

import cv2
import numpy as np
import pytest

from avatar.vision.face.align import CANONICAL_3D, MIRROR, TEMPLATE_LANDMARKS, align_face, eye_centres, template_points
from avatar.vision.face.detector import iou
from avatar.vision.face.pose import angles_from_rotation, head_pose
from avatar.catalog.platforms import PLATFORMS, Framing


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Counter-clockwise rotation about the centre (OpenCV convention), borders reflected."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def eye_line(points: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(eye-line angle in degrees, eye midpoint, eye distance) of 468 landmarks."""
    right, left = eye_centres(np.asarray(points, dtype=np.float64))
    angle = math.degrees(math.atan2(left[1] - right[1], left[0] - right[0]))
    return angle, (right + left) / 2, float(np.linalg.norm(left - right))


def paste(canvas: np.ndarray, image: np.ndarray, side: int, x: int, y: int) -> None:
    canvas[y:y + side, x:x + side] = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------------------ detection
def test_astronaut_has_one_face_with_a_mesh_inside_its_box(astronaut, face_analyzer):
    faces = face_analyzer.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    x0, y0, x1, y1 = face.box
    assert face.score > 0.5 and 60 < x1 - x0 < 200
    assert face.keypoints.shape == (6, 2) and face.landmarks.shape == (468, 2)
    centre = face.landmarks.mean(axis=0)
    assert x0 < centre[0] < x1 and y0 < centre[1] < y1
    right, left = eye_centres(face.landmarks.astype(np.float64))
    assert np.linalg.norm(right - face.keypoints[0]) < 8 and np.linalg.norm(left - face.keypoints[1]) < 8


def test_frontal_astronaut_pose_is_near_zero(astronaut_face):
    assert abs(astronaut_face.yaw) < 8 and abs(astronaut_face.pitch) < 8 and abs(astronaut_face.roll) < 8


@pytest.mark.parametrize("degrees", [20.0, -25.0])
def test_rotated_photo_reports_roll(astronaut, astronaut_face, face_analyzer, degrees):
    face = face_analyzer.detect(rotate(astronaut, degrees))[0]
    # OpenCV turns counter-clockwise for positive angles; roll is clockwise-positive.
    assert face.roll == pytest.approx(astronaut_face.roll - degrees, abs=3.0)
    assert abs(face.yaw) < 8 and abs(face.pitch) < 8


def test_flipped_photo_finds_the_mirrored_box(astronaut, astronaut_face, face_analyzer):
    faces = face_analyzer.detect(np.ascontiguousarray(astronaut[:, ::-1]))
    assert len(faces) == 1
    x0, y0, x1, y1 = astronaut_face.box
    width = astronaut.shape[1]
    assert iou(faces[0].box, (width - x1, y0, width - x0, y1)) > 0.7
    assert faces[0].roll == pytest.approx(-astronaut_face.roll, abs=2.0)


@pytest.mark.parametrize("relight", [
    lambda im: (255 * (im / 255.0) ** 0.6).astype(np.uint8),
    lambda im: (255 * (im / 255.0) ** 1.8).astype(np.uint8),
    lambda im: np.clip(im * 0.55, 0, 255).astype(np.uint8),
    lambda im: np.clip(im * 1.3 + 20, 0, 255).astype(np.uint8),
], ids=["gamma0.6", "gamma1.8", "darker", "brighter"])
def test_relit_photo_finds_a_similar_box(astronaut, astronaut_face, face_analyzer, relight):
    faces = face_analyzer.detect(relight(astronaut.astype(np.float64)))
    assert len(faces) == 1 and iou(faces[0].box, astronaut_face.box) > 0.7


@pytest.mark.parametrize("photo", ["coffee", "brick", "noise"])
def test_photos_without_people_have_no_face(face_analyzer, photo):
    from skimage import data
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8) if photo == "noise" \
        else getattr(data, photo)()
    assert face_analyzer.detect(image) == []


def test_group_photo_puts_the_larger_face_first(astronaut, face_analyzer):
    canvas = np.full((768, 1024, 3), 128, np.uint8)
    paste(canvas, astronaut, 512, 0, 256)          # larger face, off to the lower left
    paste(canvas, astronaut, 320, 502, 224)        # smaller face, nearer the centre
    faces = face_analyzer.detect(canvas)
    assert len(faces) == 2
    widths = [f.box[2] - f.box[0] for f in faces]
    assert widths[0] > widths[1] * 1.3
    assert faces[0].box[0] < 300 < faces[1].box[0]


def test_small_face_in_a_wide_shot_is_found(astronaut, face_analyzer):
    canvas = np.full((900, 1200, 3), 128, np.uint8)
    paste(canvas, astronaut, 512, 344, 194)
    faces = face_analyzer.detect(canvas)
    assert len(faces) == 1
    assert 0.05 < faces[0].coverage(1200, 900) < 0.15


def test_large_photo_boxes_map_back_to_photo_pixels(astronaut, astronaut_face, face_analyzer):
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_LINEAR)
    face = face_analyzer.detect(big)[0]
    scaled = tuple(v * 4 for v in astronaut_face.box)
    assert iou(face.box, scaled) > 0.75
    assert np.median(np.linalg.norm(face.landmarks - astronaut_face.landmarks * 4, axis=1)) < 8


def test_greyscale_and_rgba_inputs_are_accepted(astronaut, astronaut_face, face_analyzer):
    grey = cv2.cvtColor(np.ascontiguousarray(astronaut), cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    for image in (grey, rgba):
        faces = face_analyzer.detect(image)
        assert len(faces) == 1 and iou(faces[0].box, astronaut_face.box) > 0.7
    with pytest.raises(ValueError):
        face_analyzer.detect(astronaut.astype(np.float32))


# ------------------------------------------------------------------------------------------------ template and pose
def test_template_follows_the_framing():
    angle, mid, dist = eye_line(TEMPLATE_LANDMARKS)
    assert abs(angle) < 1e-6 and mid == pytest.approx([0.5, Framing().eye_y]) and dist == pytest.approx(0.2)
    tight = Framing(eye_y=0.44, eye_distance=0.24)
    _, mid, dist = eye_line(template_points(tight, 800))
    assert mid == pytest.approx([400, 0.44 * 800]) and dist == pytest.approx(0.24 * 800)


def test_canonical_template_is_symmetric_and_faces_the_camera():
    assert np.array_equal(MIRROR[MIRROR], np.arange(468))
    assert np.allclose(CANONICAL_3D[MIRROR] * [-1, 1, 1], CANONICAL_3D, atol=1e-4)
    nose, chin, forehead = CANONICAL_3D[1], CANONICAL_3D[152], CANONICAL_3D[10]
    assert nose[2] < CANONICAL_3D[:, 2].mean()        # the nose tip is nearest the camera
    assert forehead[1] < 0 < nose[1] < chin[1]        # y points down the face


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    a, b = math.radians(yaw), math.radians(pitch)
    ry = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), math.sin(b)], [0, -math.sin(b), math.cos(b)]])
    return ry @ rx


@pytest.mark.parametrize("yaw,pitch", [(30.0, 0.0), (-20.0, 10.0), (0.0, -25.0), (50.0, 15.0)])
def test_pose_recovers_a_known_head_rotation(yaw, pitch):
    rot = _rotation(yaw, pitch)
    assert angles_from_rotation(rot) == pytest.approx((yaw, pitch), abs=1e-6)
    mesh = CANONICAL_3D @ rot.T * 80.0 + [300.0, 200.0, 0.0]
    got_yaw, got_pitch, roll = head_pose(mesh)
    assert (got_yaw, got_pitch) == pytest.approx((yaw, pitch), abs=0.5)
    # Sign conventions: yaw + moves the nose toward image right, pitch + moves it up.
    nose_shift = mesh[1, :2] - np.mean(eye_centres(mesh), axis=0)[:2]
    assert np.sign(nose_shift[0]) == np.sign(yaw) or yaw == 0
    assert abs(roll) < 1.0


# ------------------------------------------------------------------------------------------------ alignment
def test_aligned_astronaut_sits_on_the_template(aligned_astronaut, astronaut_face):
    a = aligned_astronaut
    assert a.image.shape == (512, 512, 3) and a.image.dtype == np.uint8
    angle, mid, dist = eye_line(a.landmarks)
    assert abs(angle) < 1.0 and np.linalg.norm(mid - [256, 0.42 * 512]) < 2 and dist == pytest.approx(102.4, rel=0.03)
    mapped = astronaut_face.landmarks @ a.matrix[:, :2].T + a.matrix[:, 2]
    assert np.allclose(mapped, a.landmarks, atol=0.01)
    x0, y0, x1, y1 = a.face_box
    inside = (a.landmarks[:, 0] >= x0) & (a.landmarks[:, 0] <= x1) & (a.landmarks[:, 1] >= y0) & (a.landmarks[:, 1] <= y1)
    assert inside.all() and 0 <= x0 < x1 <= 512


@pytest.mark.parametrize("degrees", [20.0, -25.0, 30.0, -30.0])
def test_tilted_photo_aligns_level_at_the_template_position(astronaut, face_analyzer, degrees):
    photo = rotate(astronaut, degrees)
    aligned = align_face(photo, face_analyzer.detect(photo)[0], Framing(), 512)
    angle, mid, dist = eye_line(aligned.landmarks)
    assert abs(angle) < 2.0
    assert np.linalg.norm(mid - [256, 0.42 * 512]) < 3.0
    assert dist == pytest.approx(0.2 * 512, rel=0.05)


@pytest.fixture(scope="module")
def dlib_eyes():
    """An eye-line measure independent of the MediaPipe models the service aligns with: dlib's HOG face detector and
    its 5-point shape predictor (eye corners), on the image upscaled 2x (dlib answers whole pixels)."""
    import dlib

    from avatar.store.models import resolve
    detector, shape = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(resolve("identity_shape")))

    def angle(rgb: np.ndarray) -> float | None:
        big = cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
        found = detector(big, 0)
        if not found:
            return None
        points = shape(big, max(found, key=lambda r: r.area()))
        p = np.array([[points.part(i).x, points.part(i).y] for i in range(4)], np.float64)
        a, b = sorted([p[0:2].mean(axis=0), p[2:4].mean(axis=0)], key=lambda q: q[0])
        return math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))
    return angle


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    """Grace Hopper (US Navy photograph, public domain; ships with matplotlib)."""
    from matplotlib import cbook
    from PIL import Image
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return np.array(Image.open(fh).convert("RGB"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from avatar.flow.local import LocalPipeline
    with LocalPipeline(configs={"save_avatar": {"storage_uri": str(tmp_path_factory.mktemp("avatars"))},
                                "load_photo": {"input_cache": False}}) as p:
        yield p


STYLE_PLATFORMS = {"corporate_headshot": "linkedin", "anime_character": "discord", "editorial_portrait": "portfolio"}


@pytest.mark.parametrize("degrees", [30.0, -30.0])
@pytest.mark.parametrize("style", list(STYLE_PLATFORMS))
@pytest.mark.parametrize("photo", ["astronaut", "hopper"])
def test_every_style_delivers_a_level_eye_line_from_a_tilted_photo(request, pipeline, dlib_eyes, photo, style,
                                                                   degrees):
    """The delivered avatar (whole flow: alignment, style, background, enhancement) of a photo tilted 30 degrees
    either way: its eye line, as dlib finds it, within 2 degrees of level in every style."""
    import io

    from PIL import Image

    from avatar.contracts import GenerateRequest
    from avatar.job import PhotoInput
    buf = io.BytesIO()
    Image.fromarray(rotate(request.getfixturevalue(photo), degrees)).save(buf, format="PNG")
    job = pipeline.generate(GenerateRequest(image="-", style=style, platform=STYLE_PLATFORMS[style]),
                            PhotoInput(data=buf.getvalue()))
    out = np.asarray(Image.open(io.BytesIO(pipeline.stages["save_avatar"].storage.get(job.avatar_key))))
    angle = dlib_eyes(out[..., :3])
    print(f"{photo} tilted {degrees:+.0f}, {style}: eye line {angle:+.2f} degrees")
    assert angle is not None and abs(angle) <= 2.0


def test_alignment_matches_the_image_content(astronaut, aligned_astronaut, face_analyzer):
    """Re-detecting on the aligned crop finds the eyes where the returned landmarks say they are."""
    again = face_analyzer.detect(aligned_astronaut.image)[0]
    assert np.median(np.linalg.norm(again.landmarks - aligned_astronaut.landmarks, axis=1)) < 4.0


def test_platform_framing_sets_eye_distance_and_height(astronaut, astronaut_face):
    framing = PLATFORMS["discord"].framing
    aligned = align_face(astronaut, astronaut_face, framing, 400)
    _, mid, dist = eye_line(aligned.landmarks)
    assert dist == pytest.approx(framing.eye_distance * 400, rel=0.03)
    assert mid[1] == pytest.approx(framing.eye_y * 400, abs=2.0)


def test_out_of_photo_area_is_filled_from_the_border_not_black(astronaut, face_analyzer):
    corner = np.ascontiguousarray(astronaut[40:300, 140:400])     # the face near the top edge, grey backdrop
    face = face_analyzer.detect(corner)[0]
    aligned = align_face(corner, face, Framing(eye_y=0.5, eye_distance=0.1), 256)
    top = aligned.image[:8].reshape(-1, 3)
    assert top.mean() > 60 and (top.sum(axis=1) == 0).mean() < 0.01


def test_alignment_without_landmarks_is_refused(astronaut, astronaut_face):
    with pytest.raises(ValueError):
        align_face(astronaut, dataclasses.replace(astronaut_face, landmarks=None), Framing(), 256)


def test_detect_and_align_speed(astronaut, face_analyzer):
    """Prints the per-photo time (see `pytest -s`); timings are not asserted on shared machines."""
    runs = 10
    start = time.perf_counter()
    for _ in range(runs):
        face = face_analyzer.detect(astronaut)[0]
        aligned = align_face(astronaut, face, Framing(), 512)
    per_photo = (time.perf_counter() - start) / runs * 1000
    print(f"\ndetect + landmarks + align, 512x512 photo: {per_photo:.1f} ms")
    assert aligned.image.shape == (512, 512, 3)
