"""`avatar batch SOURCE --out URI`: avatars for a whole directory of photos (a local folder or an `s3://` / `gs://`
prefix, through `pyarrow.fs`) as a Ray Data pipeline.

    read_binary_files(photos)  ->  map_batches(AvatarMaker, an actor pool)  ->  PNGs + results Parquet
                                   each actor holds the pure core stages once (avatar.flow.local.LocalPipeline)

Use it for offline volume (an HR import of thousands of photos already in object storage): no HTTP, no per-item
round trips, every core busy with one model copy per actor. The Serve batch route (`POST /v1/batches`) is for
platforms that need an API, webhooks and the live service's autoscaling (see README, "Which batch path").

Outputs: `<out>/avatars/<relative path>.png` (and `thumbnails/`), one `<out>/results/part-<run>.parquet` per run
(one row per photo of that run: its id, state, error code, likeness, billable, latency). Resumable: photos whose PNG
already exists are skipped, so a rerun after a failure does only what is missing. A bad photo becomes a failed row
with the same error code the HTTP API would give; it never stops the run.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
READ_CPUS = 0.1

RESULT_SCHEMA = pa.schema([
    ("external_id", pa.string()), ("source", pa.string()), ("state", pa.string()), ("output", pa.string()),
    ("error_code", pa.string()), ("error_message", pa.string()), ("likeness", pa.float32()),
    ("billable", pa.bool_()), ("attempts", pa.int32()), ("warnings", pa.string()), ("latency_ms", pa.float32()),
    ("run_id", pa.string()),
])


@dataclass(frozen=True)
class BatchOptions:
    """The team look every photo of the run shares, and how the pipeline is sized."""

    style: str | None = None
    platform: str = "generic"
    palette: str | None = None
    background: str | None = None
    resolution: str = "standard"
    style_intensity: float | None = None
    match_lighting: bool = True
    actors: int = 2                 # the actor pool: each holds one copy of the models
    cpus_per_actor: float = 1.0
    batch_size: int = 4             # photos per map_batches call


def open_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and root path for a local folder or an object-store URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def list_photos(source: str) -> tuple[pafs.FileSystem, str, list[str]]:
    """Every image file under `source` (recursive; by suffix), sorted."""
    fs, root = open_fs(source)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=False))
    paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.lower().endswith(IMAGE_SUFFIXES))
    return fs, root, paths


def external_id(path: str, root: str) -> str:
    """The photo's id: its path under the source without the suffix (`team/alice.jpg` -> `team/alice`)."""
    rel = PurePosixPath(path).relative_to(PurePosixPath(root))
    return str(rel.with_suffix(""))


def written_ids(out: str) -> set[str]:
    """Ids whose avatar is already in `<out>/avatars` (what a resumed run skips)."""
    fs, root = open_fs(out)
    base = f"{root.rstrip('/')}/avatars"
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {external_id(i.path, base) for i in infos if i.type == pafs.FileType.File and i.path.endswith(".png")}


class AvatarMaker:
    """The `map_batches` actor: builds the pure stages once, then turns batches of photo bytes into avatars written
    under `<out>/avatars/<id>.png`, answering one result row per photo."""

    def __init__(self, options: dict[str, Any], out: str, root: str) -> None:
        from avatar.contracts import GenerateRequest
        from avatar.flow.local import LocalPipeline
        from avatar.flow.names import Stage
        self.options = BatchOptions(**options)
        self.root = root
        o = self.options
        self.spec = GenerateRequest(input_id="in_" + "x" * 22, style=o.style, platform=o.platform,
                                    palette=o.palette, background=o.background, resolution=o.resolution,
                                    style_intensity=o.style_intensity).spec(match_lighting=o.match_lighting)
        self.pipeline = LocalPipeline(configs={"load_photo": {"input_cache": False},
                                               "save_avatar": {"storage_uri": out}})
        self.names: dict[str, str] = {}   # request id -> photo id, for the file names
        self.pipeline.stages[Stage.SAVE_AVATAR.value].keys = lambda job: (
            f"avatars/{self.names[job.request_id]}.png", f"thumbnails/{self.names[job.request_id]}.png")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [self.one(bytes(data), str(path)) for data, path in zip(batch["bytes"], batch["path"])]
        return {name: [row[name] for row in rows] for name in RESULT_SCHEMA.names}

    def one(self, data: bytes, path: str) -> dict[str, Any]:
        from avatar.errors import AvatarError
        from avatar.job import PhotoInput
        started = time.perf_counter()
        ident = external_id(path, self.root)
        job = self.spec.job(asynchronous=True)   # nobody waits on a connection for a directory batch
        self.names[job.request_id] = ident
        row: dict[str, Any] = {"external_id": ident, "source": path, "state": "failed", "output": None,
                               "error_code": None, "error_message": None, "likeness": None, "billable": False,
                               "attempts": 0, "warnings": "", "latency_ms": None, "run_id": ""}
        try:
            done = self.pipeline.run(job, PhotoInput(data=data))
            row.update(state="succeeded", output=done.avatar_key, likeness=float(done.likeness_score),
                       billable=bool(done.billable), attempts=done.attempt,
                       warnings=",".join(w.code for w in done.warnings))
        except AvatarError as exc:
            row.update(error_code=exc.code, error_message=exc.message)
        except Exception as exc:  # noqa: BLE001 - one bad photo is a failed row, never the end of the run
            row.update(error_code="stage_failed", error_message=type(exc).__name__)
        finally:
            self.names.pop(job.request_id, None)
        row["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return row


@dataclass
class RunSummary:
    run_id: str
    total: int
    skipped: int
    succeeded: int
    failed: int
    seconds: float
    avatars_per_s: float
    results: str | None
    first_result_s: float | None = None   # start-up: listing, actors loading their models, the first batch
    steady_per_s: float | None = None     # after the first results: the pool's pace without start-up
    mean_photo_ms: float | None = None    # one photo in one actor (the stages alone)


def run(source: str, out: str, options: BatchOptions, overwrite: bool = False, progress: bool = True,
        limit: int | None = None) -> RunSummary:
    """The whole pipeline on the Ray this process is connected to (see `cli.py`: local, or a cluster)."""
    import ray
    from tqdm import tqdm
    options_check(options)
    started = time.perf_counter()
    fs, root, paths = list_photos(source)
    done = set() if overwrite else written_ids(out)
    todo = [p for p in paths if external_id(p, root) not in done][:limit]
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    rows: list[dict[str, Any]] = []
    first_at: float | None = None
    if todo:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False        # one bar, per photo, below
        # reading is I/O: a sliver of a CPU per read task, so a pool that fills the cluster cannot starve its input
        ds = ray.data.read_binary_files(todo, filesystem=fs, include_paths=True, num_cpus=READ_CPUS)
        ds = ds.map_batches(AvatarMaker, fn_constructor_kwargs={"options": asdict(options), "out": out, "root": root},
                            batch_size=options.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=options.actors),
                            num_cpus=actor_cpus(options, ray.cluster_resources().get("CPU", 1.0)))
        with tqdm(total=len(todo), unit="photo", disable=not progress, desc="avatars") as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if first_at is None:
                    first_at, first_rows = time.perf_counter(), batch.num_rows
                rows.extend(batch.to_pylist())
                bar.update(batch.num_rows)
    for row in rows:
        row["run_id"] = run_id
    results = write_results(out, run_id, rows) if rows else None
    ended = time.perf_counter()
    seconds = ended - started
    ok = sum(r["state"] == "succeeded" for r in rows)
    steady = None
    if first_at is not None and len(rows) > first_rows and ended > first_at:
        steady = round((len(rows) - first_rows) / (ended - first_at), 3)
    return RunSummary(run_id, len(paths), len(paths) - len(todo), ok, len(rows) - ok, round(seconds, 2),
                      round(len(rows) / seconds, 3) if rows else 0.0, results,
                      round(first_at - started, 2) if first_at is not None else None, steady,
                      round(sum(r["latency_ms"] for r in rows) / len(rows), 1) if rows else None)


def actor_cpus(options: BatchOptions, cluster_cpus: float) -> float:
    """CPUs per actor: as asked, but never so many that the pool plus a read task exceed the cluster (the pool
    would wait for CPUs its own input needs)."""
    fit = (cluster_cpus - READ_CPUS) / max(options.actors, 1)
    return max(min(options.cpus_per_actor, fit), 0.1)


def options_check(options: BatchOptions) -> None:
    """The team look validated like a generate request's (unknown style, platform or palette: a 422 now)."""
    from avatar.contracts import GenerateRequest, parse_request
    parse_request(GenerateRequest, {"input_id": "in_" + "x" * 22, "style": options.style,
                                    "platform": options.platform, "palette": options.palette,
                                    "background": options.background, "resolution": options.resolution,
                                    "style_intensity": options.style_intensity})


def write_results(out: str, run_id: str, rows: list[dict[str, Any]]) -> str:
    fs, root = open_fs(out)
    folder = f"{root.rstrip('/')}/results"
    fs.create_dir(folder, recursive=True)
    path = f"{folder}/part-{run_id}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), path, filesystem=fs)
    return path


def read_results(out: str) -> pa.Table:
    """Every run's rows (a resumed directory has one part per run)."""
    fs, root = open_fs(out)
    import pyarrow.dataset as ds
    return ds.dataset(f"{root.rstrip('/')}/results", filesystem=fs, format="parquet").to_table()


__all__ = ["AvatarMaker", "BatchOptions", "RunSummary", "list_photos", "read_results", "run", "written_ids"]
