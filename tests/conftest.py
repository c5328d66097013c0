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


# ------------------------------------------------------------------------------------------ the session's Ray
@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session, shared by the training, Ray Data and Serve modules (tests/servers.py:
    RAY_ENV is its environment, AVATAR_DATA_DIR a fresh directory). Started on first use; the modules that use it run
    after every other module (see `pytest_collection_modifyitems`)."""
    import ray

    from servers import start_local_ray
    local = start_local_ray()
    yield ray
    local.stop()


@pytest.fixture(scope="session")
def serve_app(ray_session):
    """The whole app deployed once on the session's Ray with serve_config.yaml's user_configs; a module changes them
    with `serve_app.configured(overrides)` (a reconfigure of the running replicas) and gets them back after it."""
    import os
    from pathlib import Path

    from servers import start_serve_app
    yield start_serve_app(Path(os.environ["AVATAR_DATA_DIR"]))


# The order of the modules on the shared app: test_service reads pass rates counted since the ingress replica started,
# test_styles_service the tokens StyleApply loaded since it started, so both come before the modules that send
# diffusion-engine results or other tokens through the same replicas.
SERVE_ORDER = ("test_service", "test_styles_service", "test_jobs_service", "test_hardening_service",
               "test_diffusion_service")


# The longest modules of the tier without Ray go first, so that the two xdist workers of `make test` start them at
# once and the short ones fill in around them (a fresh copy's `make run` and `make bench`; numba's first compile).
FAST_TIER_FIRST = ("test_fresh_clone", "test_matting")


def _ray_group(item: pytest.Item) -> int:
    """0: no Ray; 1: a Ray of its own (must start before the session's); 2: the session's Ray; 3: its Serve app."""
    names = set(item.fixturenames)
    if "serve_app" in names:
        return 3
    if "ray_session" in names:
        return 2
    return 1 if item.get_closest_marker("own_ray") else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by what it starts (`ray`, `serve`: `make test-fast` deselects them) and run the modules in
    that order: no Ray; the two-node cluster (its own Ray, before the session's starts); the session's Ray; its Serve
    app. Each module stays whole, so module fixtures are set up once."""
    groups = {item: _ray_group(item) for item in items}
    module_group: dict[str, int] = {}
    for item, group in groups.items():
        if group:
            item.add_marker(pytest.mark.ray)
        if group == 3:
            item.add_marker(pytest.mark.serve)
        module_group[item.module.__name__] = max(group, module_group.get(item.module.__name__, 0))

    def key(pair: tuple[int, pytest.Item]) -> tuple[int, int, int]:
        index, item = pair
        name = item.module.__name__
        order = {0: FAST_TIER_FIRST, 3: SERVE_ORDER}.get(module_group[name], ())
        return module_group[name], order.index(name) if name in order else len(order), index
    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


@pytest.fixture(scope="session", autouse=True)
def _no_ray_in_the_fast_tier(request):
    """`make test-fast` (AVATAR_TESTS_WITHOUT_RAY=1) runs the tests marked neither `ray` nor `slow`: one that starts a
    Ray anyway fails at once, naming the fixture it should use, instead of slowly passing in the wrong tier."""
    import os
    if not os.environ.get("AVATAR_TESTS_WITHOUT_RAY"):
        yield
        return
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("this test starts Ray: use the `ray_session` or `serve_app` fixture so that it is marked "
                           "`ray` and left out of `make test-fast`")
    patch = pytest.MonkeyPatch()
    patch.setattr(ray, "init", refuse)
    yield
    patch.undo()


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
