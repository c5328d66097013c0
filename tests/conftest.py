"""Shared fixtures: the public-domain astronaut photo and the face stage run on it once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from avatar.platforms import Framing


# ------------------------------------------------------------------------------------------------------------- face
@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """512x512 RGB uint8 portrait (Eileen Collins, NASA, public domain; ships with scikit-image). Do not modify."""
    from skimage import data
    image = data.astronaut()
    image.setflags(write=False)
    return image


@pytest.fixture(scope="session")
def face_analyzer() -> Iterator["FaceAnalyzer"]:  # noqa: F821 - imported lazily so collection stays cheap
    """The real detector + landmark models from the model cache, loaded once."""
    from avatar.face.analyzer import FaceAnalyzer
    analyzer = FaceAnalyzer.load()
    yield analyzer
    analyzer.close()


@pytest.fixture(scope="session")
def astronaut_face(face_analyzer, astronaut):
    """The astronaut's DetectedFace (box, keypoints, 468 landmarks, head pose)."""
    faces = face_analyzer.detect(astronaut)
    assert faces, "the face detector found no face in the astronaut photo"
    return faces[0]


@pytest.fixture(scope="session")
def aligned_astronaut(astronaut, astronaut_face):
    """The astronaut aligned to the canonical template at Framing() defaults, 512x512."""
    from avatar.face.align import align_face
    return align_face(astronaut, astronaut_face, Framing(), 512)
