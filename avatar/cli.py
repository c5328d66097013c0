"""`avatar`: run the service, generate one avatar locally, manage model files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avatar.errors import AvatarError


def _cmd_models(args: argparse.Namespace) -> int:
    from avatar import models
    if args.action == "fetch":
        models.fetch(args.components or models.DEFAULT_COMPONENTS)
        print(f"models cached in {models.models_dir()}")
    else:
        for f in models.CATALOGUE:
            path = models.models_dir() / f.filename
            print(f"{f.component:18s} {f.filename:45s} {'cached' if path.exists() else 'missing':8s} {f.package}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from avatar.contracts import GenerateRequest, parse_request
    from avatar.job import PhotoInput
    from avatar.pipeline import LocalPipeline
    payload = {"image": "", "platform": args.platform, "resolution": args.resolution}
    for key in ("style", "palette", "background", "style_intensity"):
        if getattr(args, key) is not None:
            payload[key] = getattr(args, key)
    req = parse_request(GenerateRequest, payload)
    store_dir = Path(args.output).resolve().parent / ".avatar-store"
    with LocalPipeline(configs={"save_avatar": {"storage_uri": str(store_dir)}}) as pipeline:
        job = pipeline.generate(req, PhotoInput(data=Path(args.photo).read_bytes()))
        Path(args.output).write_bytes(pipeline.stages["save_avatar"].storage.get(job.avatar_key))
    print(json.dumps({"output": args.output, "face_count": job.face_count, "likeness_score": job.likeness_score,
                      "input_quality_score": job.input_quality_score, "attempts": job.attempt,
                      "billable": job.billable, "warnings": [w.__dict__ for w in job.warnings],
                      "stage_ms": job.timings}, indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from deployments.launcher import serve_forever
    serve_forever(args.host, args.port, args.profile, args.config, args.dashboard)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service on a local Ray (embedded default)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--profile", choices=("auto", "cpu", "gpu"), default="auto",
                       help="cpu: no GPU asks (chosen automatically when Ray sees no GPU)")
    serve.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "serve_config.yaml"))
    serve.add_argument("--dashboard", action="store_true", help="also start the Ray dashboard (needs ray[default])")
    serve.set_defaults(func=_cmd_serve)

    gen = sub.add_parser("generate", help="generate one avatar in-process")
    gen.add_argument("photo")
    gen.add_argument("-o", "--output", required=True)
    gen.add_argument("--style")
    gen.add_argument("--platform", default="generic")
    gen.add_argument("--palette")
    gen.add_argument("--background")
    gen.add_argument("--resolution", choices=("standard", "high"), default="standard")
    gen.add_argument("--style-intensity", dest="style_intensity", type=float)
    gen.set_defaults(func=_cmd_generate)

    models = sub.add_parser("models", help="model files: fetch into the cache, or list")
    models.add_argument("action", choices=("fetch", "list"))
    models.add_argument("components", nargs="*")
    models.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AvatarError as exc:
        print(json.dumps(exc.to_body()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
