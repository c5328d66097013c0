"""The diffusion engines inside the service: StyleApply and BgGenerate on tiny local models, batched concurrent
requests, the whole app over HTTP, and a deployment whose model is missing failing its start-up with the reason."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import tiny_diffusion  # noqa: E402

pytestmark = pytest.mark.timeout(300)
WORK = 64   # the size the tiny models render at


# ------------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    return tiny_diffusion.build_sd(tmp_path_factory.mktemp("diffusion-service") / "sd-tiny")


def recipe_book(base: Path | str) -> dict:
    """One recipe per built-in style on the tiny model; no guidance (one UNet pass per step) and 2 steps."""
    recipe = {"base_model": str(base), "prompt": "a portrait photo", "steps": 2, "guidance_scale": 1.0,
              "strength": [0.3, 0.9], "work_size": WORK}
    return {"seed": 0, "recipes": {style: recipe for style in
                                   ("corporate_headshot", "anime_character", "editorial_portrait")}}


def engine(recipes, **extra) -> dict:
    return {"name": "diffusion", "options": {"recipes": recipes, "device": "cpu", "warmup": True,
                                             "warmup_size": WORK, "vae_tiling": False, **extra}}


@pytest.fixture(scope="module")
def recipes_yaml(base_model, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("recipes") / "diffusion.yaml"
    path.write_text(yaml.safe_dump(recipe_book(base_model)))
    return str(path)


@pytest.fixture(scope="module")
def face_crop(aligned_astronaut) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's aligned crop and landmarks scaled down to 128 px (what FaceDetect gives at work_size 128)."""
    image = np.asarray(Image.fromarray(aligned_astronaut.image).resize((128, 128), Image.Resampling.LANCZOS))
    return image, aligned_astronaut.landmarks.astype(np.float32) * (128 / aligned_astronaut.image.shape[0])


def make_job(image: np.ndarray, landmarks: np.ndarray, i: int = 0, style: str = "corporate_headshot"):
    from avatar.job import AvatarJob
    from avatar.vision.imageio import Pixels
    job = AvatarJob(request_id=f"req_{i}", style=style, platform="linkedin", size=800, intensity=0.3 + 0.1 * i)
    job.aligned = Pixels.of(image)
    job.work_size = image.shape[0]
    job.landmarks = landmarks
    return job


def shifted(image: np.ndarray, i: int) -> np.ndarray:
    return np.roll(image, 3 * i, axis=1)


def _spy(monkeypatch, cls: type, method: str) -> list[int]:
    """Records the batch size of every call of `cls.method` (its first argument is the list of images)."""
    sizes: list[int] = []
    original = getattr(cls, method)

    def spy(self, images, *args, **kwargs):
        sizes.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(cls, method, spy)
    return sizes


@pytest.fixture
def local_batching():
    """Forgets the `@serve.batch` queues after a local-testing-mode test. Local mode creates them in this process, and
    `Deployment.options()` pickles the class by value, queue included (an asyncio Future cannot be pickled): without
    this, later `.options()` calls in the same process would fail."""
    from deployments.bg_generate import BgGenerate
    from deployments.style_apply import StyleApply
    yield
    for deployment in (StyleApply, BgGenerate):
        deployment.func_or_class.run_batched.set_max_batch_size.__self__._queue = None


def _run_local(monkeypatch, deployment, config: dict, engine_method: str):
    """`serve.run` in local testing mode, returning once the replica's engine is loaded (that mode starts
    `reconfigure` without waiting for it)."""
    import time
    from types import SimpleNamespace

    from ray import serve

    # `@serve.batch` reads the replica context (for a max_ongoing_requests warning), which local testing mode lacks.
    options = SimpleNamespace(max_ongoing_requests=deployment.max_ongoing_requests)
    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(_deployment_config=options))
    handle = serve.run(deployment.options(user_config=config).bind(), _local_testing_mode=True)
    deadline = time.monotonic() + 120
    while not handle.engine_has.remote(engine_method).result(timeout_s=10):
        assert time.monotonic() < deadline, f"{deployment.name} did not finish loading"
        time.sleep(0.05)
    return handle


# -------------------------------------------------------------------- batching (in-process Serve testing mode)

def test_batch_settings_from_user_config():
    from avatar.stages import BatchConfig
    from avatar.stages.style_apply import StyleApplyConfig
    assert (StyleApplyConfig().batch.max_batch_size, StyleApplyConfig().batch.wait_timeout_s) == (4, 0.02)
    batch = StyleApplyConfig.model_validate({"batch": {"max_batch_size": 8, "wait_timeout_s": 0.1}}).batch
    assert (batch.max_batch_size, batch.wait_timeout_s) == (8, 0.1)
    for bad in ({"max_batch_size": 0}, {"max_batch_size": 2.5}, {"wait_timeout_s": -1}, {"size": 4}):
        with pytest.raises(ValueError):
            BatchConfig.model_validate(bad)


def test_changing_only_batch_settings_keeps_the_loaded_engine():
    from deployments.style_apply import StyleApply
    replica = StyleApply.func_or_class()
    replica.reconfigure({"engine": {"name": "cpu"}})
    stage = replica.stage
    assert replica.run_batched._get_max_batch_size() == 4
    replica.reconfigure({"engine": {"name": "cpu"}, "batch": {"max_batch_size": 6, "wait_timeout_s": 0.1}})
    assert replica.stage is stage and replica.run_batched._get_max_batch_size() == 6
    assert replica.run_batched._get_batch_wait_timeout_s() == 0.1
    replica.reconfigure({"engine": {"name": "cpu", "options": {"threads": 1}}})   # an engine change rebuilds it
    assert replica.stage is not stage and replica.run_batched._get_max_batch_size() == 4
    with pytest.raises(ValueError):
        replica.reconfigure({"engine": {"name": "cpu"}, "batch": {"max_batch_size": 0}})


def test_cpu_engine_keeps_one_job_at_a_time(monkeypatch, local_batching, face_crop):

    from avatar.stages.style_apply import StyleApplyStage
    from deployments.style_apply import StyleApply
    batched = []
    monkeypatch.setattr(StyleApplyStage, "run_batch", lambda self, jobs, attempts=None: batched.append(jobs) or jobs)
    handle = _run_local(monkeypatch, StyleApply, {"engine": {"name": "cpu"}}, "apply")
    image, landmarks = face_crop
    results = [r.result(timeout_s=60) for r in [handle.run.remote(make_job(image, landmarks, i)) for i in range(3)]]
    assert batched == [] and all(r.versions["style_engine"].startswith("cpu/") for r in results)


def test_concurrent_style_requests_share_one_engine_call(monkeypatch, local_batching, recipes_yaml, face_crop):

    from avatar.engines.diffusion.engine import DiffusionStyleEngine
    from deployments.style_apply import StyleApply
    sizes = _spy(monkeypatch, DiffusionStyleEngine, "apply_batch")
    config = {"engine": engine(recipes_yaml), "batch": {"max_batch_size": 5, "wait_timeout_s": 0.5}}
    handle = _run_local(monkeypatch, StyleApply, config, "apply_batch")
    assert sizes == [1, 1, 1]   # the warm-up: one generation per recipe
    sizes.clear()
    image, landmarks = face_crop
    jobs = [make_job(shifted(image, i), landmarks, i) for i in range(6)]
    results = [r.result(timeout_s=60) for r in [handle.run.remote(job) for job in jobs]]
    assert sizes == [5, 1]      # max_batch_size from user_config (the default 4 would give [4, 2]), then the rest
    for job, out in zip(jobs, results):
        assert out.request_id == job.request_id   # every caller gets its own job back
        assert out.styled.array().shape == image.shape
        assert out.versions["style_engine"].startswith("diffusion/1.0+diffusers")
        assert out.versions["style_model"].startswith("sd-tiny@") and out.timings["style_apply"] > 0
    single = handle.run.remote(make_job(shifted(image, 5), landmarks, 5)).result(timeout_s=60)
    assert sizes == [5, 1, 1]
    assert np.array_equal(single.styled.array(), results[5].styled.array())   # seeds per request


def test_concurrent_background_requests_share_one_engine_call(monkeypatch, local_batching, base_model, face_crop):

    from avatar.engines.diffusion.engine import DiffusionBackgroundEngine
    from avatar.vision.imageio import Pixels
    from deployments.bg_generate import BgGenerate
    sizes = _spy(monkeypatch, DiffusionBackgroundEngine, "render_batch")
    config = {"engine": engine(recipe_book(base_model)), "batch": {"max_batch_size": 2, "wait_timeout_s": 0.5}}
    handle = _run_local(monkeypatch, BgGenerate, config, "render_batch")
    sizes.clear()
    image, landmarks = face_crop
    jobs, styled = [], []
    for i in range(3):
        job = make_job(image, landmarks, i, style="anime_character")
        styled.append(shifted(image, i))
        job.styled = Pixels.of(styled[-1])
        jobs.append(job)
    results = [r.result(timeout_s=60) for r in [handle.run.remote(job) for job in jobs]]
    assert sizes == [2, 1]
    for before, out in zip(styled, results):
        composed, person = out.composed.array(), out.mask.mask() >= 1.0
        assert composed.shape == image.shape and person.any() and not person.all()
        assert np.array_equal(composed[person], before[person])   # the person is untouched
        assert out.versions["background_engine"].startswith("diffusion/")


# ------------------------------------------------------------------------------- the real app over HTTP (Ray)

@pytest.fixture(scope="module")
def service(serve_app, base_model, recipes_yaml):
    """The session's app with StyleApply and BgGenerate on the diffusion engine (tiny models, CPU) and FaceDetect at
    the tiny models' work size, for this module; the CPU engines are back after it."""
    batch = {"max_batch_size": 4, "wait_timeout_s": 0.01}
    with serve_app.configured({
            "FaceDetect": {"work_size": 128},
            "StyleApply": {"engine": engine(recipes_yaml), "batch": batch},
            "BgGenerate": {"engine": engine(recipe_book(base_model)), "batch": batch}}):
        with serve_app.client() as client:
            yield client


def _b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return base64.b64encode(buf.getvalue()).decode()


def _generate(service, astronaut, intensity: float) -> tuple[dict, Image.Image]:
    resp = service.post("/v1/avatar/generate", json={"image": _b64(astronaut), "style": "corporate_headshot",
                                                     "platform": "linkedin", "style_intensity": intensity})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    png = service.get(body["avatar_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    return body, Image.open(io.BytesIO(png.content))


@pytest.mark.serve
def test_generate_over_http_on_the_diffusion_engine(service, astronaut, base_model):
    from avatar.engines.diffusion.engine import fingerprint
    body, image = _generate(service, astronaut, 0.9)
    assert body["style"] == "corporate_headshot" and (body["width"], body["height"]) == (800, 800)
    assert image.size == (800, 800)
    meta = image.text
    assert meta["avatar:style_engine"].startswith("diffusion/1.0+diffusers")
    assert meta["avatar:style_model"] == fingerprint(str(base_model))
    assert meta["avatar:background_engine"].startswith("diffusion/1.0+diffusers")
    assert meta["avatar:request_id"] == body["request_id"]
    # Random weights do not keep the face: the gate fails every attempt, the retries ran, the best one is delivered
    # unbilled, with warnings saying why.
    assert body["attempts"] == 3 and meta["avatar:attempts"] == "3"
    assert body["billable"] is False
    codes = {w["code"] for w in body["validation_warnings"]}
    assert "quality_gate_failed" in codes
    assert body["stage_ms"]["style_apply"] > 0 and body["stage_ms"]["bg_generate"] > 0

    low_body, low = _generate(service, astronaut, 0.1)
    assert low_body["attempts"] == 3
    a, b = (np.asarray(im.convert("RGB"), np.float32) for im in (image, low))
    assert np.abs(a - b).mean() > 2.0   # style_intensity reaches the diffusion strength


@pytest.mark.serve
def test_missing_model_fails_start_up_with_the_reason_then_redeploys(service, base_model, recipes_yaml, face_crop,
                                                                    tmp_path):
    from ray import serve
    from ray.serve.schema import ApplicationStatus, DeploymentStatus

    from deployments.style_apply import StyleApply
    missing = tmp_path / "no-such-model"
    options = dict(ray_actor_options={"num_cpus": 0.1, "num_gpus": 0}, max_constructor_retry_count=1)
    broken = StyleApply.options(user_config={"engine": engine(recipe_book(missing))}, **options)
    with pytest.raises(RuntimeError) as failure:
        serve.run(broken.bind(), name="style-check", route_prefix=None)
    assert "StyleApply" in str(failure.value)   # serve.run names the failed deployment; the status has the reason

    status = serve.status().applications["style-check"]
    assert status.status == ApplicationStatus.DEPLOY_FAILED
    deployment = status.deployments["StyleApply"]
    assert deployment.status == DeploymentStatus.DEPLOY_FAILED
    assert "ModelUnavailable" in deployment.message
    assert f"base model '{missing}' not found" in deployment.message
    assert service.get("/healthz").json() == {"status": "ok"}   # the running app is not affected

    healthy = StyleApply.options(user_config={"engine": engine(recipes_yaml)}, **options)
    handle = serve.run(healthy.bind(), name="style-check", route_prefix=None)
    assert serve.status().applications["style-check"].status == ApplicationStatus.RUNNING
    image, landmarks = face_crop
    job = handle.run.remote(make_job(image, landmarks)).result(timeout_s=60)
    assert job.styled.array().shape == image.shape
    serve.delete("style-check")
