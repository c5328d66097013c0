"""SaveAvatar: the chosen attempt as a PNG with text metadata plus a thumbnail, written to storage."""

from __future__ import annotations

from pydantic import Field

from avatar import __version__
from avatar.flow.attempts import Outcome
from avatar.job import AvatarJob
from avatar.settings import settings
from avatar.stages import Role, StageConfig, StageDefinition, timed
from avatar.store.storage import Storage
from avatar.vision.png import encode_png

NAME = "save_avatar"


class SaveAvatarConfig(StageConfig):
    storage_uri: str = ""
    png_compress_level: int = Field(1, ge=0, le=3, description="deflate level of the PNG encoder (ISA-L): 0 is "
                                    "fastest, 3 smallest; 1 encodes an 800 px avatar in ~6 ms CPU (README)")


class SaveAvatarStage:
    """Final PNG with text metadata plus a 100x100 thumbnail, written to storage; returns their keys."""

    name = NAME

    def __init__(self, storage: Storage, thumbnail_size: int = 100, compress_level: int = 1) -> None:
        self.storage = storage
        self.thumbnail_size = thumbnail_size
        self.compress_level = compress_level

    def metadata(self, job: AvatarJob) -> dict[str, str]:
        meta = {"Software": f"avatar-service {__version__}", "avatar:style": job.style,
                "avatar:platform": job.platform, "avatar:request_id": job.request_id,
                "avatar:created_at": job.created_at, "avatar:likeness_score": f"{job.likeness_score:.4f}",
                "avatar:attempts": str(job.attempt)}
        if job.token:
            meta["avatar:style_version"] = str(job.token.get("version", ""))
        meta.update({f"avatar:{k}": v for k, v in sorted(job.versions.items())})
        return meta

    def keys(self, job: AvatarJob) -> tuple[str, str]:
        """Where the avatar and its thumbnail go (directory batches name them after the photo instead)."""
        day = job.created_at[:10].replace("-", "/")
        return f"avatars/{day}/{job.request_id}.png", f"avatars/{day}/{job.request_id}_thumb.png"

    def run(self, job: AvatarJob, outcome: Outcome | None = None) -> AvatarJob:
        """Stores the chosen attempt; `outcome` (None without a quality gate: delivered as is, billable) brings the
        gate's verdicts."""
        if outcome is not None:
            outcome.apply(job)
        else:
            job.billable = True
        with timed(job, self.name):
            from avatar.engines.template import frame
            full, small = frame(job.output.array(), job.mask.mask() if job.mask is not None else None,
                                job.template, self.thumbnail_size)
            text = self.metadata(job)
            job.avatar_key, job.thumbnail_key = self.keys(job)
            self.storage.put(job.avatar_key, encode_png(full, text, self.compress_level))
            self.storage.put(job.thumbnail_key, encode_png(small, text, self.compress_level))
            job.styled = job.composed = job.aligned = job.mask = job.output = None   # keep the reply small
            job.matte_background = None
            job.identity_ref = job.landmarks = None
        return job


def save_avatar_stage(cfg: SaveAvatarConfig):
    return SaveAvatarStage(Storage(cfg.storage_uri or settings().resolved_storage_uri),
                           compress_level=cfg.png_compress_level)


STAGE = StageDefinition(NAME, Role.SAVE, SaveAvatarConfig, save_avatar_stage)
