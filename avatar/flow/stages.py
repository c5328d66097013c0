"""The six pipeline stages (plus the quality gate) as plain objects: `run(job) -> job`.

Each stage holds its loaded components and does one step; Serve deployments wrap one stage each, the in-process
pipeline (CLI, tests, benchmarks) calls them directly. Nothing here knows about Ray. Every image a stage no longer
needs is dropped from the job before it leaves, so each hop carries only what the next stages read.
"""

from __future__ import annotations

import io
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from avatar import __version__
from avatar.catalog.platforms import PLATFORMS
from avatar.contracts import TRANSPARENT
from avatar.errors import InvalidRequest, NoFaceDetected
from avatar.flow.attempts import Attempt, Outcome, Verdict
from avatar.flow.names import Stage
from avatar.job import AvatarJob, PhotoInput
from avatar.store.fetch import FetchPolicy, fetch_image
from avatar.store.storage import Storage
from avatar.vision.imageio import DecodeLimits, Pixels, decode_photo, decode_trusted, encode_jpeg, encode_lossless
from avatar.vision.matting import PersonLayer, alpha_at, fill_hidden, over_grey, person_layer


@contextmanager
def timed(job: AvatarJob | list[AvatarJob], name: str) -> Iterator[None]:
    """Adds the block's time to `job.timings[name]`; for a batch, every job gets the whole batch's time, which is
    how long each request waited for its result."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = (time.perf_counter() - start) * 1000
        for one in job if isinstance(job, list) else [job]:
            one.timings[name] = round(one.timings.get(name, 0.0) + elapsed, 2)


# ---------------------------------------------------------------- LoadPhoto
class LoadPhotoStage:
    """Fetch (URL) and decode untrusted bytes into an upright RGB photo, re-encoded for the next hop."""

    name = Stage.LOAD_PHOTO

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


# ---------------------------------------------------------------- FaceDetect
class FaceDetectStage:
    """Find the dominant face, score the input, align the head to the platform's template, embed the identity."""

    name = Stage.FACE_DETECT

    def __init__(self, analyzer, identity, work_size: int = 512, min_coverage: float = 0.15) -> None:
        self.analyzer = analyzer
        self.identity = identity
        self.work_size = work_size
        self.min_coverage = min_coverage

    def inspect(self, rgb: np.ndarray):
        """Faces (dominant first) and the quality report of the dominant one: the cheap pre-flight."""
        from avatar.vision.quality import assess_input
        faces = self.analyzer.detect(rgb)
        return faces, assess_input(rgb, faces[0] if faces else None)

    def check(self, job: AvatarJob) -> dict:
        """The pre-flight report of `POST /v1/avatar/check`: what generate would see, without generating."""
        from avatar.vision.face.analyzer import describe
        with timed(job, "check"):
            rgb = job.photo.array()
            faces, report = self.inspect(rgb)
        face = faces[0] if faces else None
        warnings = [{"code": w.code, "message": w.message} for w in report.warnings]
        if len(faces) > 1:
            warnings.append({"code": "multiple_faces",
                             "message": f"{len(faces)} faces found; the largest, most central one would be used"})
        coverage = float(report.face_coverage) if face else 0.0
        if face and coverage < self.min_coverage:
            warnings.append({"code": "face_too_small", "message": f"the face covers {coverage:.0%} of the frame's "
                                                                 f"shorter side; at least {self.min_coverage:.0%}"})
        return {"face_detected": face is not None, "face_count": len(faces), "face_coverage": round(coverage, 4),
                "min_face_coverage": self.min_coverage,
                "head_angle": {"yaw": round(face.yaw, 1), "pitch": round(face.pitch, 1), "roll": round(face.roll, 1)}
                if face else None,
                "input_quality_score": round(float(report.score), 4), "validation_warnings": warnings,
                "accepted": bool(face) and coverage >= self.min_coverage,
                "width": job.photo_size[0], "height": job.photo_size[1], **job.input_fields(),
                "faces": describe(faces, rgb.shape, job.photo_size)}

    def run(self, job: AvatarJob) -> AvatarJob:
        from avatar.vision.face.align import align_face
        with timed(job, self.name):
            rgb = job.photo.array()
            faces, report = self.inspect(rgb)
            job.face_count = len(faces)
            job.input_quality_score = round(float(report.score), 4)
            if not faces:
                raise NoFaceDetected("no face was found in the image", field="image",
                                     extra={"face_detected": False, "face_count": 0,
                                            "input_quality_score": job.input_quality_score})
            face = faces[0]
            job.face_coverage = round(float(report.face_coverage), 4)
            job.head_angle = round(float(report.head_angle), 2)
            if job.face_coverage < self.min_coverage:
                raise InvalidRequest(
                    f"the face covers {job.face_coverage:.0%} of the frame's shorter side; at least "
                    f"{self.min_coverage:.0%} is required (crop closer to the face)", field="image",
                    code="face_too_small", extra={"face_detected": True, "face_count": len(faces),
                                                  "face_coverage": job.face_coverage,
                                                  "input_quality_score": job.input_quality_score})
            for w in report.warnings:
                job.warn(w.code, w.message)
            if len(faces) > 1:
                job.warn("multiple_faces", f"{len(faces)} faces found; the largest, most central one was used")
            aligned = align_face(rgb, face, PLATFORMS[job.platform].framing, self.work_size)
            crop = aligned.image
            if job.match_lighting:   # one team look: every member under the same light
                from avatar.team import match_lighting
                crop = match_lighting(crop, aligned.landmarks)
            job.aligned = Pixels.of(crop)
            job.work_size = aligned.image.shape[0]
            job.landmarks = aligned.landmarks.astype(np.float32)
            job.face_box = tuple(float(v) for v in aligned.face_box)
            job.identity_ref = self.identity.embed(rgb, face.box) if self.identity is not None else None
            job.photo = None   # the photo is not needed past this point and is never stored
        return job


# ---------------------------------------------------------------- StyleApply
def engine_used(engine, job: AvatarJob):
    """The engine that rendered `job`: a routed engine's pick for it, else the engine itself (for metadata)."""
    pick = getattr(engine, "engine_for", None)
    return pick(job.spec()) if callable(pick) else engine


class StyleApplyStage:
    """Renders one attempt: the analysed job (shared by every attempt) is copied with the attempt's parameters."""

    name = Stage.STYLE_APPLY

    def __init__(self, engine) -> None:
        self.engine = engine

    def run(self, job: AvatarJob, attempt: Attempt | None = None) -> AvatarJob:
        job = job.for_attempt(attempt) if attempt is not None else job
        with timed(job, self.name):
            styled = self.engine.apply(job.aligned.array(), job.landmarks, job.spec())
            self._finish(job, styled)
        return job

    def run_batch(self, jobs: list[AvatarJob], attempts: list[Attempt | None] | None = None) -> list[AvatarJob]:
        """Many jobs in one engine call (`apply_batch`); engines without it style them one by one."""
        attempts = attempts or [None] * len(jobs)
        jobs = [j.for_attempt(a) if a is not None else j for j, a in zip(jobs, attempts)]
        apply_batch = getattr(self.engine, "apply_batch", None)
        if apply_batch is None or not jobs:
            return [self.run(job) for job in jobs]
        with timed(jobs, self.name):
            styled = apply_batch([j.aligned.array() for j in jobs], [j.landmarks for j in jobs],
                                 [j.spec() for j in jobs])
            for job, image in zip(jobs, styled):
                self._finish(job, image)
        return jobs

    def _finish(self, job: AvatarJob, styled: np.ndarray) -> None:
        job.styled = Pixels.of(styled)
        engine = engine_used(self.engine, job)
        job.versions["style_engine"] = f"{engine.name}/{engine.version}"
        model_ids = getattr(engine, "model_ids", None)   # per style when the engine loads several models
        model = (model_ids or {}).get(job.style) or getattr(engine, "model_id", None)
        if model:
            job.versions["style_model"] = str(model)


# ---------------------------------------------------------------- BgGenerate
class BgGenerateStage:
    """Mattes the person (the fast matte, or the learned one where `choose_matter` picks it) and composites them on
    the generated background."""

    name = Stage.BG_GENERATE

    def __init__(self, segmenter, engine, learned=None) -> None:
        self.segmenter = segmenter      # the fast matte (avatar.vision.matting.PersonMatter)
        self.engine = engine
        self.learned = learned          # the learned matte (avatar.vision.learned_matte.LearnedMatter), opt-in

    def run(self, job: AvatarJob) -> AvatarJob:
        with timed(job, self.name):
            layer = self._layer(job)
            self._finish(job, fill_hidden(layer.rgb, layer.alpha) if job.background == TRANSPARENT
                         else self.engine.render(layer.rgb, layer.alpha, job.landmarks, job.spec()))
        return job

    def run_batch(self, jobs: list[AvatarJob]) -> list[AvatarJob]:
        """Many jobs in one engine call (`render_batch`); engines without it render them one by one."""
        render_batch = getattr(self.engine, "render_batch", None)
        if render_batch is None or not jobs or any(j.background == TRANSPARENT for j in jobs):
            return [self.run(job) for job in jobs]
        with timed(jobs, self.name):
            layers = [self._layer(job) for job in jobs]
            out = render_batch([x.rgb for x in layers], [x.alpha for x in layers],
                               [j.landmarks for j in jobs], [j.spec() for j in jobs])
            for job, image in zip(jobs, out):
                self._finish(job, image)
        return jobs

    def _layer(self, job: AvatarJob) -> PersonLayer:
        """The matted person of this attempt (`avatar.vision.matting`); its alpha travels on as `job.mask`, and
        where it judged the crop to be old background as `job.matte_background` (what the gate checks with)."""
        matter = choose_matter(self.segmenter, self.learned, job)
        layer = person_layer(matter, job.aligned.array(), job.styled.array(), job.landmarks, job.matte_level)
        job.mask = Pixels.of_mask(layer.alpha)
        if layer.matte is not None:
            job.matte_background = Pixels.of((~layer.matte.check.person).astype(np.uint8) * 255)
        job.versions["matte"] = matte_version(matter)
        return layer

    def _finish(self, job: AvatarJob, composed: np.ndarray) -> None:
        job.composed, job.styled = Pixels.of(composed), None
        engine = engine_used(self.engine, job)
        job.versions["background_engine"] = f"{engine.name}/{engine.version}"


def choose_matter(fast, learned, job: AvatarJob):
    """The matte of `job`: the learned one when loaded and its `use_for` covers the job (all requests; asynchronous
    jobs and batch items; or only requests asking `quality: best`, which every setting honours; `auto` is all on a
    GPU and asynchronous work on CPU, where it costs about a second a avatar), else the fast one."""
    if learned is None:
        return fast
    use = learned.config.use_for
    if use == "auto":
        use = "all" if learned.on_gpu else "async"
    wanted = job.quality == "best" or use == "all" or (use == "async" and job.asynchronous)
    return learned if wanted else fast


def matte_version(matter) -> str:
    """What the PNG metadata and the reply's versions name: `fast/guided`, `learned/isnet@512`, ..."""
    version = getattr(matter, "version", None) or getattr(getattr(matter, "config", None), "method", "mask")
    return f"{getattr(matter, 'name', 'fast')}/{version}"


# ---------------------------------------------------------------- DetailEnhance
class DetailEnhanceStage:
    name = Stage.DETAIL_ENHANCE

    def __init__(self, enhancer) -> None:
        self.enhancer = enhancer

    def run(self, job: AvatarJob) -> AvatarJob:
        with timed(job, self.name):
            result = self.enhancer.enhance(job.composed.array(), job.landmarks, job.size, job.style)
            image = getattr(result, "image", result)
            job.output, job.composed = Pixels.of(image), None
            used = getattr(result, "upscaler_used", None)
            if used:
                job.versions["upscaler"] = str(used) if isinstance(used, str) else "realesr-animevideov3-x4"
        return job


# ---------------------------------------------------------------- QualityGate
class QualityGateStage:
    """Face presence, likeness against the input face, content safety: decides retries and billing.

    Answers a small `Verdict`, not the job: the orchestrator decides on it while the rendered job stays where it is.
    """

    name = Stage.QUALITY_GATE

    def __init__(self, gate) -> None:
        self.gate = gate

    def run(self, job: AvatarJob) -> Verdict:
        from avatar.gate import BackgroundRef, IdentityRef, plan_retry
        with timed(job, self.name):
            aligned = job.aligned.array()
            ref = IdentityRef(job.identity_ref, aligned=aligned)
            output, alpha = job.output.array(), job.mask.mask() if job.mask is not None else None
            if job.background == TRANSPARENT and alpha is not None:   # checked as seen: on a neutral backdrop
                output = over_grey(output, alpha_at(alpha, output.shape[0]))
            decided = job.matte_background.mask() > 0.5 if job.matte_background is not None else None
            background = BackgroundRef(aligned, alpha, job.landmarks, decided) if alpha is not None else None
            result = self.gate.evaluate(output, job.output_face_box(), ref, job.platform, job.style, background)
            retry = plan_retry(job.attempt, job.intensity, result, self.gate.config)
        attempt = Attempt(job.attempt, job.intensity, job.background, job.palette, job.matte_level)
        return Verdict(attempt, result, retry, dict(job.timings))


# ---------------------------------------------------------------- SaveAvatar
class SaveAvatarStage:
    """Final PNG with text metadata plus a 100x100 thumbnail, written to storage; returns their keys."""

    name = Stage.SAVE_AVATAR

    def __init__(self, storage: Storage, thumbnail_size: int = 100, compress_level: int = 3) -> None:
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
            image = Image.fromarray(full)
            info = PngInfo()
            for key, value in self.metadata(job).items():
                info.add_text(key, value)
            job.avatar_key, job.thumbnail_key = self.keys(job)
            self.storage.put(job.avatar_key, _png(image, info, self.compress_level))
            self.storage.put(job.thumbnail_key, _png(Image.fromarray(small), info, self.compress_level))
            job.styled = job.composed = job.aligned = job.mask = job.output = None   # keep the reply small
            job.matte_background = None
            job.identity_ref = job.landmarks = None
        return job


def _png(image: Image.Image, info: PngInfo, level: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=level)
    return buf.getvalue()


def close_stage(stage: object) -> None:
    """Release a stage's model runtimes (MediaPipe objects must be closed before interpreter exit)."""
    for attr in ("analyzer", "segmenter", "learned", "identity", "engine", "enhancer", "gate"):
        close = getattr(getattr(stage, attr, None), "close", None)
        if callable(close):
            close()
