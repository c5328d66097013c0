"""Builds each pure stage from its config dict (a deployment's `user_config`); shared by Serve and the local pipeline."""

from __future__ import annotations

from typing import Any

from avatar.settings import ServiceSettings
from avatar.store.fetch import FetchPolicy
from avatar.vision.imageio import DecodeLimits
from avatar.flow.stages import (BgGenerateStage, DetailEnhanceStage, FaceDetectStage, LoadPhotoStage, SaveAvatarStage,
                           StyleApplyStage)
from avatar.store.storage import Storage


def load_photo_stage(cfg: dict[str, Any]) -> LoadPhotoStage:
    settings = ServiceSettings()
    limits = DecodeLimits(**{k: cfg[k] for k in ("max_bytes", "max_pixels", "min_side", "max_side") if k in cfg})
    policy = FetchPolicy(timeout_s=float(cfg.get("fetch_timeout_s", settings.fetch_timeout_s)),
                         max_bytes=int(cfg.get("fetch_max_bytes", settings.fetch_max_bytes)),
                         allow_private=bool(cfg.get("fetch_allow_private", settings.fetch_allow_private)))
    inputs = None
    if cfg.get("input_cache", True):
        from avatar.store.input_cache import InputCache
        inputs = InputCache(Storage(cfg.get("storage_uri") or settings.resolved_storage_uri),
                            ttl_s=int(cfg.get("input_ttl_s", 24 * 3600)))
    return LoadPhotoStage(limits, policy, int(cfg.get("max_working_side", 2048)), inputs)


def face_detect_stage(cfg: dict[str, Any]) -> FaceDetectStage:
    from avatar.vision.face.analyzer import FaceAnalyzer
    from avatar.vision.identity import IdentityModel
    models = cfg.get("models", {})
    analyzer = FaceAnalyzer.load(models.get("face_detector"), models.get("face_landmarks"))
    identity = IdentityModel.load(models.get("identity_encoder"), models.get("identity_shape"))
    return FaceDetectStage(analyzer, identity, work_size=int(cfg.get("work_size", 512)),
                           min_coverage=float(cfg.get("min_face_coverage", 0.15)))


def style_apply_stage(cfg: dict[str, Any]) -> StyleApplyStage:
    from avatar.engines.registry import create_style_engine
    engine = cfg.get("engine", {"name": "cpu"})
    return StyleApplyStage(create_style_engine(engine.get("name", "cpu"), engine.get("options")))


def bg_generate_stage(cfg: dict[str, Any]) -> BgGenerateStage:
    from avatar.vision.segmentation import PersonSegmenter
    from avatar.engines.registry import create_background_engine
    engine = cfg.get("engine", {"name": "cpu"})
    segmenter = PersonSegmenter.load(cfg.get("models", {}).get("person_segmenter"))
    return BgGenerateStage(segmenter, create_background_engine(engine.get("name", "cpu"), engine.get("options")))


def detail_enhance_stage(cfg: dict[str, Any]) -> DetailEnhanceStage:
    from avatar.engines.enhance import DetailEnhancer
    return DetailEnhanceStage(DetailEnhancer.load(cfg.get("models", {}).get("upscaler")))


def save_avatar_stage(cfg: dict[str, Any]) -> SaveAvatarStage:
    storage = Storage(cfg.get("storage_uri") or ServiceSettings().resolved_storage_uri)
    return SaveAvatarStage(storage, compress_level=int(cfg.get("png_compress_level", 3)))


def quality_gate_stage(cfg: dict[str, Any]):
    from avatar.vision.face.analyzer import FaceAnalyzer
    from avatar.gate import GateConfig, QualityGate
    from avatar.vision.identity import IdentityModel
    from avatar.vision.safety import SafetyClassifier
    from avatar.flow.stages import QualityGateStage
    models = cfg.get("models", {})
    gate = QualityGate(IdentityModel.load(models.get("identity_encoder"), models.get("identity_shape")),
                       SafetyClassifier.load(models.get("safety_classifier")),
                       FaceAnalyzer.load(models.get("face_detector"), models.get("face_landmarks")),
                       GateConfig.from_dict(cfg.get("gate", {})))
    return QualityGateStage(gate)


STAGE_BUILDERS = {"load_photo": load_photo_stage, "face_detect": face_detect_stage,
                  "style_apply": style_apply_stage, "bg_generate": bg_generate_stage,
                  "detail_enhance": detail_enhance_stage, "quality_gate": quality_gate_stage,
                  "save_avatar": save_avatar_stage}
