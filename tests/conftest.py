"""Shared fixtures: the public-domain astronaut photo and the face stage run on it once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from avatar.catalog.platforms import Framing


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
    from avatar.vision.face.analyzer import FaceAnalyzer
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
    from avatar.vision.face.align import align_face
    return align_face(astronaut, astronaut_face, Framing(), 512)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray per test module that needs one (training jobs), sized for a 2-core CI machine."""
    import os
    import shutil
    import tempfile

    import ray

    from service.launcher import init_local_ray
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    init_local_ray(num_cpus=2, temp_dir=temp, object_store_mb=256)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------------------------------ shared-state servers
@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (initdb + pg_ctl in a temp dir, on a free loopback port)."""
    from servers import start_postgres
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback for the session (endpoint override; AWS_* test credentials in the env)."""
    from servers import start_s3
    server = start_s3()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    """An empty database of each backend: a SQLite file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'avatar.sqlite3'}"
    return request.getfixturevalue("postgres").new_database()
