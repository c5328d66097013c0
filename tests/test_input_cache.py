"""`cache_input` keeps only accepted photos, per account and within a quota; without an API key only where the
operator allowed it. Runs the real LoadPhoto and FaceDetect stages through the orchestrator's check flow."""

from __future__ import annotations

import asyncio
import inspect
import io

import numpy as np
import pytest
from PIL import Image

from avatar.errors import TooManyRequests, Unauthorized
from avatar.flow import orchestrator
from avatar.flow.names import Stage
from avatar.stages.face_detect import FaceDetectStage
from avatar.stages.load_photo import LoadPhotoStage
from avatar.job import AvatarJob, PhotoInput
from avatar.store.input_cache import InputCache, InputQuota
from avatar.store.storage import Storage


def _jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture()
def flow(tmp_path, face_analyzer):
    """check(photo, account) through LoadPhoto + FaceDetect with an input cache under `tmp_path`."""
    storage = Storage(str(tmp_path / "store"))

    def make(quota: InputQuota = InputQuota()):
        cache = InputCache(storage, ttl_s=3600, quota=quota)
        stages = {Stage.LOAD_PHOTO: LoadPhotoStage(inputs=cache), Stage.FACE_DETECT: FaceDetectStage(face_analyzer, None)}

        def call(stage, *args, method="run"):
            async def run():
                ready = [await a if inspect.isawaitable(a) else a for a in args]
                return getattr(stages[stage], method)(*ready)
            return asyncio.ensure_future(run())

        def check(photo: bytes, account: str | None) -> dict:
            job = AvatarJob(request_id=AvatarJob.new_request_id(), style="", platform="generic", size=0, intensity=0,
                            account=account)
            return asyncio.run(orchestrator.check(job, PhotoInput(data=photo, cache=True), call))
        return check
    make.stored = lambda: storage.list("inputs")
    return make


def test_a_photo_without_an_accepted_face_is_not_cached(flow):
    check = flow()
    noise = np.random.default_rng(0).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    report = check(_jpeg(noise, 95), "acc_a")
    assert report["accepted"] is False and "input_id" not in report
    assert flow.stored() == []   # nothing written: the noise photo used to be kept as a 4 MB PNG for 24 h


def test_an_accepted_photo_is_cached_under_the_account(flow, astronaut):
    report = flow()(_jpeg(astronaut), "acc_a")
    assert report["accepted"] and report["input_id"].startswith("in_")
    assert flow.stored() == [f"inputs/acc_a/{report['input_id']}"]


def test_anonymous_caching_is_off_unless_configured(flow, astronaut):
    with pytest.raises(Unauthorized) as err:
        flow()(_jpeg(astronaut), None)
    assert err.value.field == "cache_input" and err.value.code == "cache_input_needs_api_key"
    assert flow.stored() == []
    report = flow(InputQuota(anonymous=True))(_jpeg(astronaut), None)
    assert flow.stored() == [f"inputs/public/{report['input_id']}"]


def test_the_per_account_quota_is_enforced(flow, astronaut):
    check = flow(InputQuota(max_entries=2))
    check(_jpeg(astronaut), "acc_a")
    check(_jpeg(astronaut), "acc_a")
    with pytest.raises(TooManyRequests) as err:
        check(_jpeg(astronaut), "acc_a")
    assert err.value.status == 429 and err.value.code == "input_quota_exceeded"
    check(_jpeg(astronaut), "acc_b")             # another account has its own quota
    assert len(flow.stored()) == 3
    small = flow(InputQuota(max_bytes=1000))
    with pytest.raises(TooManyRequests):
        small(_jpeg(astronaut), "acc_c")          # a byte quota smaller than one photo
