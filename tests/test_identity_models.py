"""The identity model is a configured component: SFace by default (aligned on the face mesh, its own likeness
calibration), dlib still selectable; the gate scores with the curve of the model that measured, and refuses to compare
embeddings of two different models."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from avatar.errors import StageFailed
from avatar.gate import GateConfig, IdentityRef, QualityGate
from avatar.vision.calibration import CALIBRATION_PATH, calibration_path, load_curve
from avatar.vision.identity import DlibIdentity, IdentityModel, SFaceIdentity, five_points, similarity


class Safe:
    def nsfw_probability(self, rgb: np.ndarray) -> float:
        return 0.01


@pytest.fixture(scope="module")
def sface() -> SFaceIdentity:
    return IdentityModel.load()


@pytest.fixture(scope="module")
def dlib_model() -> DlibIdentity:
    return IdentityModel.load("dlib")


@pytest.fixture(scope="module")
def hopper():
    from matplotlib import cbook
    from PIL import Image
    return np.array(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))


def _pasted(aligned, other_photo, face_analyzer) -> np.ndarray:
    from avatar.vision.face.align import align_face
    other = align_face(other_photo, face_analyzer.detect(other_photo)[0], size=aligned.image.shape[0])
    out = aligned.image.copy()
    x0, y0, x1, y1 = (int(v) for v in aligned.face_box)
    out[y0:y1, x0:x1] = other.image[y0:y1, x0:x1]
    return out


def test_default_is_sface_and_dlib_stays_selectable(sface, dlib_model):
    assert isinstance(sface, SFaceIdentity) and sface.kind == "sface"
    assert isinstance(dlib_model, DlibIdentity) and dlib_model.kind == "dlib"
    assert sface.name != dlib_model.name
    with pytest.raises(ValueError, match="unknown identity model"):
        IdentityModel.load("arcface")


def test_each_model_scores_with_its_own_calibration(sface, dlib_model):
    assert dlib_model.curve == load_curve(CALIBRATION_PATH)
    assert sface.curve == load_curve(calibration_path("sface"))
    assert sface.curve != dlib_model.curve


@pytest.mark.parametrize("kind", ["sface", "dlib"])
def test_same_person_auto_accepts_and_another_fails_every_tier(kind, sface, dlib_model, astronaut, astronaut_face,
                                                               aligned_astronaut, hopper, face_analyzer):
    model = sface if kind == "sface" else dlib_model
    gate = QualityGate(model, Safe(), face_analyzer, GateConfig())
    ref = IdentityRef(model.embed(astronaut, astronaut_face.box, astronaut_face.landmarks), aligned_astronaut.image)
    box = aligned_astronaut.face_box
    same = gate.evaluate(aligned_astronaut.image, box, ref, "linkedin", "corporate_headshot")
    other = gate.evaluate(_pasted(aligned_astronaut, hopper, face_analyzer), box, ref, "steam", "anime_character")
    print(f"{kind}: same {same.likeness}, other {other.likeness}")
    assert same.passed and same.likeness >= 0.9 and same.auto_accept
    assert not other.checks["likeness"] and other.likeness < 0.6


def test_sface_embeddings_are_unit_length_and_need_no_mesh_given(sface, astronaut, astronaut_face):
    with_mesh = sface.embed(astronaut, astronaut_face.box, astronaut_face.landmarks)
    box_only = sface.embed(astronaut, astronaut_face.box)
    assert with_mesh.shape == (128,) and with_mesh.dtype == np.float32
    assert np.linalg.norm(with_mesh) == pytest.approx(1.0, abs=1e-4)
    assert sface.distance(with_mesh, box_only) < 0.05       # same-person transforms: median 0.02, p95 0.06


def test_sface_measures_nothing_where_the_mesh_sees_no_face(sface, aligned_astronaut):
    out = aligned_astronaut.image.copy()
    x0, y0, x1, y1 = (int(v) for v in aligned_astronaut.face_box)
    out[y0:y1, x0:x1] = cv2.GaussianBlur(out, (0, 0), 16)[y0:y1, x0:x1]
    assert sface.embed(aligned_astronaut.image, aligned_astronaut.face_box) is not None
    assert sface.embed(out, aligned_astronaut.face_box) is None


def test_five_point_alignment_lands_on_the_template(astronaut_face):
    from avatar.vision.identity import SFACE_TEMPLATE
    src = five_points(astronaut_face.landmarks)
    matrix = similarity(src, SFACE_TEMPLATE)
    mapped = src @ matrix[:, :2].T + matrix[:, 2]
    # a face is not the template: OpenCV's YuNet points fit it within 4 px on this photo, the mesh's within 7
    assert np.abs(mapped - SFACE_TEMPLATE).max() < 8.0
    assert similarity(np.zeros((5, 2)), SFACE_TEMPLATE) is None


def test_sface_calibration_is_pinned_at_its_operating_point():
    doc = json.loads(calibration_path("sface").read_text())
    curve = load_curve(calibration_path("sface"))
    assert doc["identity_model"] == "sface"
    assert doc["provenance"]["identity_model"]["sha256"].startswith("fb143eea07838aa5")
    assert curve(0.637) == pytest.approx(0.60, abs=0.01)      # OpenCV zoo's accept line: cosine 0.363
    assert curve(0.38) == pytest.approx(0.90, abs=0.01)       # top of the same-person range on real photos
    m = doc["measured"]
    assert curve(m["same_person_high_res"]["p5"]) >= 0.9 and curve(m["different_people_high_res"]["median"]) < 0.3
    assert m["share_different_at_or_above_0.6"] < 0.05


def test_the_gate_refuses_embeddings_of_another_model(astronaut):
    from avatar.job import AvatarJob
    from avatar.stages.quality_gate import QualityGateStage

    class Named:
        name = "face_recognition_sface_2021dec_int8bq"

    job = AvatarJob(request_id="req_x", style="corporate_headshot", platform="linkedin", size=800, intensity=0.5)
    job.versions["identity_model"] = "dlib_face_recognition_resnet_model_v1"
    stage = QualityGateStage(QualityGate(Named(), Safe(), None))
    with pytest.raises(StageFailed, match="same identity_model"):
        stage.run(job)


def test_stage_configs_choose_the_model():
    from avatar.flow.assembly import stage_config
    from avatar.flow.names import Stage
    assert stage_config(Stage.FACE_DETECT, {}).identity_model == "sface"
    assert stage_config(Stage.QUALITY_GATE, {"identity_model": "dlib"}).identity_model == "dlib"
    with pytest.raises(Exception, match="identity_model"):
        stage_config(Stage.QUALITY_GATE, {"identity_model": "arcface"})
