"""LoadPhoto: fetch (URL) and decode untrusted bytes into an upright RGB photo; keep accepted photos for re-use."""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydantic import Field

from avatar.errors import InvalidRequest
from avatar.job import AvatarJob, PhotoInput
from avatar.settings import settings
from avatar.stages import Role, StageConfig, StageDefinition, timed
from avatar.store.fetch import FetchPolicy, fetch_image
from avatar.vision.imageio import DecodeLimits, Pixels, decode_photo, decode_trusted, encode_jpeg, encode_lossless

NAME = "load_photo"


class LoadPhotoConfig(StageConfig):
    max_bytes: int = Field(15 * 2**20, gt=0, description="encoded upload or fetched body")
    max_pixels: int = Field(40_000_000, gt=0, description="decompression-bomb guard, checked from the header")
    min_side: int = Field(200, gt=0)
    max_side: int = Field(12_000, gt=0)
    fetch_timeout_s: float | None = Field(None, gt=0, description="default: AVATAR_FETCH_TIMEOUT_S")
    fetch_max_bytes: int | None = Field(None, gt=0, description="default: AVATAR_FETCH_MAX_BYTES")
    fetch_allow_private: bool | None = None
    max_working_side: int = Field(2048, ge=256)
    input_cache: bool = True
    input_ttl_s: int = Field(24 * 3600, gt=0)
    input_cache_anonymous: bool = Field(False, description="callers without an API key may use cache_input")
    input_quota_entries: int = Field(100, gt=0, description="cached inputs one account keeps at once")
    input_quota_bytes: int = Field(256 * 2**20, gt=0, description="bytes of cached inputs one account keeps")
    storage_uri: str = ""


class LoadPhotoStage:
    """Fetch (URL) and decode untrusted bytes into an upright RGB photo, re-encoded for the next hop."""

    name = NAME

    def __init__(self, limits: DecodeLimits = DecodeLimits(), fetch_policy: FetchPolicy = FetchPolicy(),
                 max_working_side: int = 2048, inputs=None) -> None:
        self.limits = limits
        self.fetch_policy = fetch_policy
        self.max_working_side = max_working_side
        self.inputs = inputs   # avatar.store.input_cache.InputCache, for cache_input / input_id

    def load(self, source: PhotoInput) -> np.ndarray:
        data = source.data if source.data is not None else fetch_image(source.url or "", self.fetch_policy)
        return decode_photo(data, self.limits, field=source.field if source.data is not None else "image_url")

    def run(self, job: AvatarJob, source: PhotoInput) -> AvatarJob:
        with timed(job, self.name):
            if source.cache:
                self._cache().admit(job.account)   # refused before any work: no key, or the account's quota is full
            if source.input_id is not None:
                rgb = decode_trusted(self._cache().get(job.account, source.input_id))
                job.photo_size = (rgb.shape[1], rgb.shape[0])
                job.photo = Pixels.of(rgb)
                return job
            rgb = self.load(source)
            job.photo_size = (rgb.shape[1], rgb.shape[0])
            rgb = _limit_side(rgb, self.max_working_side)
            job.photo = Pixels.of(rgb)
            if source.cache:   # stored by `keep` once FaceDetect accepted the face; never for refused photos
                job.pending_input = encode_lossless(rgb) if rgb.size <= 1_500_000 * 3 else encode_jpeg(rgb, 95)
        return job

    def keep(self, job: AvatarJob) -> AvatarJob:
        """Cache the accepted photo that `run` prepared (`cache_input`) and set the job's `input_id`."""
        if job.pending_input is not None:
            job.input_id, job.input_expires_at = self._cache().put(job.account, job.pending_input)
            job.pending_input = None
        return job

    def _cache(self):
        if self.inputs is None:
            raise InvalidRequest("this service keeps no inputs (input cache disabled)", field="input_id",
                                 code="input_cache_disabled")
        return self.inputs


def _limit_side(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb
    scale = side / float(max(h, w))
    img = Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    return np.asarray(img)


def load_photo_stage(cfg: LoadPhotoConfig):
    env = settings()
    limits = DecodeLimits(cfg.max_bytes, cfg.max_pixels, cfg.min_side, cfg.max_side)
    policy = FetchPolicy(timeout_s=cfg.fetch_timeout_s or env.fetch_timeout_s,
                         max_bytes=cfg.fetch_max_bytes or env.fetch_max_bytes,
                         allow_private=env.fetch_allow_private if cfg.fetch_allow_private is None
                         else cfg.fetch_allow_private)
    inputs = None
    if cfg.input_cache:
        from avatar.store.input_cache import InputCache, InputQuota
        from avatar.store.storage import Storage
        quota = InputQuota(cfg.input_quota_entries, cfg.input_quota_bytes, cfg.input_cache_anonymous)
        inputs = InputCache(Storage(cfg.storage_uri or env.resolved_storage_uri), ttl_s=cfg.input_ttl_s, quota=quota)
    return LoadPhotoStage(limits, policy, cfg.max_working_side, inputs)


STAGE = StageDefinition(NAME, Role.LOAD, LoadPhotoConfig, load_photo_stage)
