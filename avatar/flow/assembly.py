"""Each stage's configuration (a deployment's `user_config`) as a pydantic model, and the one table of stages.

The models forbid unknown keys, so a typo in `serve_config.yaml` fails start-up naming the field instead of being
ignored. Shared by the Serve replicas, the launcher's config check and the in-process pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from avatar.flow.names import Stage
from avatar.gate import GateConfig
from avatar.vision.matting import MattingConfig
from avatar.settings import settings


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSources(StageConfig):
    """Per-component model overrides (a path, a URL or hf://repo/file); empty = the pinned catalogue files."""

    models: dict[str, str] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _known_components(cls, models: dict[str, str]) -> dict[str, str]:
        from avatar.store.models import CATALOGUE
        known = {f.component for f in CATALOGUE}
        unknown = sorted(set(models) - known)
        if unknown:
            raise ValueError(f"unknown model component(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return models


class EngineChoice(StageConfig):
    """An engine by name (`avatar.engines.registry`) and its options, which the engine itself validates."""

    name: str = "cpu"
    options: dict[str, Any] = Field(default_factory=dict)


class BatchConfig(StageConfig):
    """`@serve.batch` sizing for engines that render batches (diffusion); changing only this reloads no model."""

    max_batch_size: int = Field(4, ge=1)
    wait_timeout_s: float = Field(0.02, ge=0)


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


class FaceDetectConfig(ModelSources):
    work_size: int = Field(512, ge=128, le=2048, description="aligned crop side the render stages work at")
    min_face_coverage: float = Field(0.15, gt=0, lt=1)


class StyleApplyConfig(StageConfig):
    engine: EngineChoice = EngineChoice()
    batch: BatchConfig = BatchConfig()
    token_storage_uri: str = ""


class BgGenerateConfig(ModelSources):
    engine: EngineChoice = EngineChoice()
    batch: BatchConfig = BatchConfig()
    matting: MattingConfig = MattingConfig()


class DetailEnhanceConfig(ModelSources):
    pass


class QualityGateConfig(ModelSources):
    gate: GateConfig = GateConfig()


class SaveAvatarConfig(StageConfig):
    storage_uri: str = ""
    png_compress_level: int = Field(3, ge=0, le=9)


# ---------------------------------------------------------------- builders: config -> loaded stage
def load_photo_stage(cfg: LoadPhotoConfig):
    from avatar.flow.stages import LoadPhotoStage
    from avatar.store.fetch import FetchPolicy
    from avatar.vision.imageio import DecodeLimits
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


def face_detect_stage(cfg: FaceDetectConfig):
    from avatar.flow.stages import FaceDetectStage
    from avatar.vision.face.analyzer import FaceAnalyzer
    from avatar.vision.identity import IdentityModel
    analyzer = FaceAnalyzer.load(cfg.models.get("face_detector"), cfg.models.get("face_landmarks"))
    identity = IdentityModel.load(cfg.models.get("identity_encoder"), cfg.models.get("identity_shape"))
    return FaceDetectStage(analyzer, identity, work_size=cfg.work_size, min_coverage=cfg.min_face_coverage)


def style_apply_stage(cfg: StyleApplyConfig):
    from avatar.engines.registry import create_style_engine
    from avatar.flow.stages import StyleApplyStage
    return StyleApplyStage(create_style_engine(cfg.engine.name, cfg.engine.options))


def bg_generate_stage(cfg: BgGenerateConfig):
    from avatar.engines.registry import create_background_engine
    from avatar.flow.stages import BgGenerateStage
    from avatar.vision.matting import PersonMatter
    matter = PersonMatter.load(cfg.models.get("person_segmenter"), cfg.matting)
    learned = None
    if cfg.matting.learned.enabled:   # opt-in (licence: docs/matting.md); a missing file fails start-up with why
        from avatar.vision.learned_matte import LearnedMatter
        learned = LearnedMatter.load(cfg.matting.learned, cfg.models.get("person_matte"))
    return BgGenerateStage(matter, create_background_engine(cfg.engine.name, cfg.engine.options), learned)


def detail_enhance_stage(cfg: DetailEnhanceConfig):
    from avatar.engines.enhance import DetailEnhancer
    from avatar.flow.stages import DetailEnhanceStage
    return DetailEnhanceStage(DetailEnhancer.load(cfg.models.get("upscaler")))


def quality_gate_stage(cfg: QualityGateConfig):
    from avatar.flow.stages import QualityGateStage
    from avatar.gate import QualityGate
    from avatar.vision.face.analyzer import FaceAnalyzer
    from avatar.vision.identity import IdentityModel
    from avatar.vision.safety import SafetyClassifier
    gate = QualityGate(IdentityModel.load(cfg.models.get("identity_encoder"), cfg.models.get("identity_shape")),
                       SafetyClassifier.load(cfg.models.get("safety_classifier")),
                       FaceAnalyzer.load(cfg.models.get("face_detector"), cfg.models.get("face_landmarks"),
                                         tiled=False),   # one large face, where expected: tiles add only noise
                       cfg.gate)
    return QualityGateStage(gate)


def save_avatar_stage(cfg: SaveAvatarConfig):
    from avatar.flow.stages import SaveAvatarStage
    from avatar.store.storage import Storage
    return SaveAvatarStage(Storage(cfg.storage_uri or settings().resolved_storage_uri),
                           compress_level=cfg.png_compress_level)


@dataclass(frozen=True)
class StageEntry:
    config: type[StageConfig]
    build: Callable[[Any], Any]


STAGES: dict[Stage, StageEntry] = {
    Stage.LOAD_PHOTO: StageEntry(LoadPhotoConfig, load_photo_stage),
    Stage.FACE_DETECT: StageEntry(FaceDetectConfig, face_detect_stage),
    Stage.STYLE_APPLY: StageEntry(StyleApplyConfig, style_apply_stage),
    Stage.BG_GENERATE: StageEntry(BgGenerateConfig, bg_generate_stage),
    Stage.DETAIL_ENHANCE: StageEntry(DetailEnhanceConfig, detail_enhance_stage),
    Stage.QUALITY_GATE: StageEntry(QualityGateConfig, quality_gate_stage),
    Stage.SAVE_AVATAR: StageEntry(SaveAvatarConfig, save_avatar_stage),
}


class ConfigError(ValueError):
    """A deployment's `user_config` does not validate; the message names the deployment and the field."""


def stage_config(stage: Stage, raw: dict[str, Any] | None) -> StageConfig:
    """`raw` validated as `stage`'s config; ConfigError names `<Deployment>.user_config.<field>` and the reason."""
    try:
        return STAGES[stage].config.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(describe_invalid(stage.deployment, exc)) from None


def describe_invalid(deployment: str, exc: ValidationError) -> str:
    problems = ["{}.user_config.{}: {}".format(deployment, ".".join(str(p) for p in err["loc"]) or "(root)",
                                               err["msg"]) for err in exc.errors()]
    return "invalid serve config: " + "; ".join(problems)


def build_stage(stage: Stage, raw: dict[str, Any] | StageConfig | None) -> Any:
    """The loaded stage for a raw or validated config."""
    cfg = raw if isinstance(raw, StageConfig) else stage_config(stage, raw)
    return STAGES[stage].build(cfg)
