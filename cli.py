"""`avatar`: run the service, generate one avatar locally, manage model files, accounts and custom styles."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from avatar.errors import AvatarError, InvalidRequest
from avatar.settings import SharedSecretMissing
from service import CONFIG_PATH


def _cmd_models(args: argparse.Namespace) -> int:
    from avatar.store import models
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
    from avatar.flow.local import LocalPipeline
    payload = {"image": "", "platform": args.platform, "resolution": args.resolution}
    for key in ("style", "palette", "background", "style_intensity", "shape", "border_color", "border_width"):
        if getattr(args, key) is not None:
            payload[key] = getattr(args, key)
    req = parse_request(GenerateRequest, payload)
    with tempfile.TemporaryDirectory(prefix="avatar-") as store_dir, \
            LocalPipeline(configs={"save_avatar": {"storage_uri": store_dir},
                                   "load_photo": {"input_cache": False}}) as pipeline:
        job = pipeline.generate(req, PhotoInput(data=Path(args.photo).read_bytes()))
        Path(args.output).write_bytes(pipeline.stages["save_avatar"].storage.get(job.avatar_key))
    print(json.dumps({"output": args.output, "face_count": job.face_count, "likeness_score": job.likeness_score,
                      "input_quality_score": job.input_quality_score, "attempts": job.attempt,
                      "billable": job.billable, "warnings": [w.__dict__ for w in job.warnings],
                      "stage_ms": job.timings}, indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from avatar.settings import settings
    config = Path(args.config)
    if not config.is_file():   # before Ray starts, and as an answer rather than a traceback
        raise InvalidRequest(f"no serve config at {config}; pass --config PATH", field="config",
                             code="config_not_found")
    settings().check_shared_secrets()   # before Ray starts: a per-node secret must not reach a shared store
    from service.launcher import serve_forever
    serve_forever(args.host, args.port, args.profile, str(config), args.dashboard)
    return 0


def _accounts_uri() -> str:
    from avatar.settings import settings
    return settings().resolved_database_url


def _cmd_accounts(args: argparse.Namespace) -> int:
    from avatar.store.accounts import open_account_store
    account_id, api_key = open_account_store(_accounts_uri()).create_account(args.name, plan=args.plan)
    print(json.dumps({"account_id": account_id, "name": args.name, "plan": args.plan, "api_key": api_key}, indent=2))
    print("the API key is shown only this once; store it now", file=sys.stderr)
    return 0


def _account(account_id: str):
    """The account store and the account; InvalidRequest (exit 2) when there is no such account."""
    from avatar.store.accounts import open_account_store
    store = open_account_store(_accounts_uri())
    account = store.get_account(account_id)
    if account is None:
        raise InvalidRequest(f"no account {account_id!r}", field="account", code="account_not_found")
    return store, account


def _ledger():
    from avatar.store.credits import Ledger
    from avatar.store.database import open_database
    return Ledger(open_database(_accounts_uri()))


def _cmd_accounts_credit(args: argparse.Namespace) -> int:
    """Add credits (a purchase) or take some back (a negative correction, never below zero)."""
    _account(args.account)
    balance = _ledger().grant(args.account, args.amount, args.note or "")
    print(json.dumps({"account_id": args.account, "granted": args.amount, "balance": balance}, indent=2))
    return 0


def _cmd_accounts_show(args: argparse.Namespace) -> int:
    _, account = _account(args.account)
    ledger = _ledger()
    print(json.dumps({"account_id": account.account_id, "name": account.name, "plan": account.plan or "(default)",
                      "created_at": account.created_at, "balance": ledger.balance(account.account_id),
                      "active_seats": len(ledger.seats(account.account_id)),
                      "recent_grants": ledger.grants(account.account_id, limit=10)}, indent=2))
    return 0


def _cmd_accounts_seats(args: argparse.Namespace) -> int:
    _account(args.account)
    seats = _ledger().seats(args.account, active_only=not args.all)
    print(json.dumps({"account_id": args.account, "seats": [
        {"external_id": s.external_id, "opened_at": s.opened_at, "expires_at": s.expires_at,
         "request_id": s.request_id} for s in seats]}, indent=2))
    return 0


def _cmd_accounts_plan(args: argparse.Namespace) -> int:
    store, _ = _account(args.account)
    store.set_plan(args.account, None if args.plan == "default" else args.plan)
    print(json.dumps({"account_id": args.account, "plan": args.plan}, indent=2))
    return 0


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    """Apply the schema steps the database lacks (the service also does this when it starts)."""
    from avatar.store.database import open_database, redact
    from avatar.store.migrations import current_version
    db = open_database(_accounts_uri(), migrate=False)
    applied = db.migrate()
    print(json.dumps({"database": redact(db.url), "applied": applied, "version": current_version(db)}, indent=2))
    return 0


def _cmd_styles_train(args: argparse.Namespace) -> int:
    """Train on a local Ray of this process, printing progress while it runs, then the token id."""
    import os
    import threading

    from avatar.settings import settings
    from service.launcher import init_local_ray
    from training.records import ProgressWriter
    from training.trainers import TRAINERS
    trainer = TRAINERS[args.engine]
    if args.recipes is not None and "recipes" not in trainer.field_names():
        takes = " or ".join(name for name, t in TRAINERS.items() if "recipes" in t.field_names())
        raise InvalidRequest(f"--recipes applies to --engine {takes} only", field="recipes")
    # options left out keep the trainer's defaults (cpu: corporate_headshot, 8 epochs; diffusion: the recipe
    # book's custom style, 4 epochs)
    options = {"recipes": args.recipes, "base_style": args.base_style, "epochs": args.epochs}
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")   # progress reports every 0.2 s, not 2 s
    cfg = trainer.config(account_id=args.account, images=args.images,
                         storage_uri=settings().resolved_storage_uri, accounts_uri=_accounts_uri(),
                         num_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                         **{k: v for k, v in options.items() if v is not None})
    init_local_ray(num_cpus=max(int(args.workers * args.cpus_per_worker + 0.999), os.cpu_count() or 1))
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = trainer.run(cfg)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=train, daemon=True)
    worker.start()
    progress, last = ProgressWriter(cfg.storage_uri, cfg.account_id, cfg.job_id), None
    print(f"job {cfg.job_id}: training token {cfg.token_id} for {cfg.account_id}", flush=True)
    while worker.is_alive():
        worker.join(0.5)
        status = progress.read()
        if status and (status.state, status.epoch) != last:
            last = (status.state, status.epoch)
            loss = f"{status.loss:.4f}" if status.loss is not None else "-"
            eta = f"{status.eta_s:.0f} s" if status.eta_s is not None else "-"
            print(f"{status.state:9s} epoch {status.epoch}/{status.epochs}  loss {loss}  eta {eta}", flush=True)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    print(json.dumps({"token_id": result.token_id, "job_id": result.job_id, "seconds": round(result.seconds, 1),
                      "val_loss": result.metrics.get("val_loss")}, indent=2))
    return 0


def _cmd_styles_list(args: argparse.Namespace) -> int:
    from avatar.store.accounts import open_account_store
    from avatar.settings import settings
    from avatar.tokens import token_version
    from training.jobs import StyleJobs
    records = open_account_store(_accounts_uri()).list_styles(args.account)
    jobs = StyleJobs(settings().resolved_storage_uri).list(args.account)
    ready = {r.token_id for r in records}
    print(json.dumps({
        "styles": [{"token_id": r.token_id, "version": token_version(r.manifest),
                    "base_style": r.manifest.get("base_style"),
                    "examples": (r.manifest.get("examples") or {}).get("count"),
                    "created_at": r.manifest.get("created_at")} for r in records],
        "jobs": [{k: v for k, v in j.to_dict().items() if k in ("job_id", "token_id", "state", "epoch", "epochs",
                                                                 "loss", "eta_s", "error")}
                 for j in jobs if j.token_id not in ready]}, indent=2))
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    """A directory of photos through the Ray Data pipeline (`batch.directory`), on the Ray of `--address` (or of a
    Ray Job's environment), else on a local Ray of this process."""
    import dataclasses
    import os

    import ray

    from batch.directory import BatchOptions, options_check, run
    options = BatchOptions(style=args.style, platform=args.platform, palette=args.palette,
                           background=args.background, resolution=args.resolution,
                           style_intensity=args.style_intensity, match_lighting=not args.no_match_lighting,
                           actors=args.actors, cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size)
    options_check(options)   # a typo in the team look fails now, before a cluster is touched
    if args.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.address or None, log_to_driver=False)
    else:
        from service.launcher import init_local_ray
        init_local_ray(num_cpus=args.num_cpus)
    try:
        summary = run(args.source, args.out, options, overwrite=args.overwrite, progress=not args.quiet,
                      limit=args.limit)
    finally:
        ray.shutdown()
    print(json.dumps(dataclasses.asdict(summary), indent=2))
    return 0


def _training_engine(name: str) -> str:
    """`--engine`: a trainer of `training.trainers.TRAINERS`, looked up only when `styles train` is parsed (the
    trainers import torch, which the other commands do not need)."""
    from training.trainers import TRAINERS
    if name not in TRAINERS:
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(TRAINERS)})")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service on a local Ray (embedded default)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--profile", choices=("auto", "cpu", "gpu"), default="auto",
                       help="cpu: no GPU asks (chosen automatically when Ray sees no GPU)")
    serve.add_argument("--config", default=str(CONFIG_PATH),
                       help="the Serve config (default: the repository's, %(default)s)")
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
    gen.add_argument("--shape", choices=("square", "circle", "rounded"))
    gen.add_argument("--border-color", dest="border_color", help="#RGB or #RRGGBB")
    gen.add_argument("--border-width", dest="border_width", type=int, help="pixels of an 800 px avatar")
    gen.set_defaults(func=_cmd_generate)

    models = sub.add_parser("models", help="model files: fetch into the cache, or list")
    models.add_argument("action", choices=("fetch", "list"))
    models.add_argument("components", nargs="*")
    models.set_defaults(func=_cmd_models)

    accounts = sub.add_parser("accounts", help="platform accounts and their API keys")
    accounts_sub = accounts.add_subparsers(dest="action", required=True)
    create = accounts_sub.add_parser("create", help="create an account; prints its id and API key (shown once)")
    create.add_argument("name")
    create.add_argument("--plan", default=None, help="a plan of the ingress config (default: its default_plan)")
    create.set_defaults(func=_cmd_accounts)
    credit = accounts_sub.add_parser("credit", help="add credits to an account (negative: a correction)")
    credit.add_argument("account")
    credit.add_argument("amount", type=int)
    credit.add_argument("--note", default="", help="why (an invoice number); kept with the grant")
    credit.set_defaults(func=_cmd_accounts_credit)
    show = accounts_sub.add_parser("show", help="an account's plan, balance, seats and recent grants")
    show.add_argument("account")
    show.set_defaults(func=_cmd_accounts_show)
    seats = accounts_sub.add_parser("seats", help="an account's team seats (external ids covered for a period)")
    seats.add_argument("account")
    seats.add_argument("--all", action="store_true", help="expired seats too")
    seats.set_defaults(func=_cmd_accounts_seats)
    plan = accounts_sub.add_parser("plan", help="move an account to a plan ('default': the config's default_plan)")
    plan.add_argument("account")
    plan.add_argument("plan")
    plan.set_defaults(func=_cmd_accounts_plan)

    database = sub.add_parser("db", help="the service's database (AVATAR_DATABASE_URL)")
    database_sub = database.add_subparsers(dest="action", required=True)
    migrate = database_sub.add_parser("migrate", help="apply missing schema migrations")
    migrate.set_defaults(func=_cmd_db_migrate)

    styles = sub.add_parser("styles", help="custom styles: train a token from example images, list an account's")
    styles_sub = styles.add_subparsers(dest="action", required=True)
    train = styles_sub.add_parser("train", help="train a style token on a local Ray and print progress")
    train.add_argument("--account", required=True, help="account id (acc_...)")
    train.add_argument("--images", required=True, help="directory (or URI, Parquet manifest) of 50-200 examples")
    train.add_argument("--engine", type=_training_engine, default="cpu",
                       help="cpu: a colour LUT token; diffusion: a textual-inversion token on a recipe's base model")
    train.add_argument("--recipes", default=None,
                       help="diffusion: the recipe YAML the service uses (default: the repository's "
                            "configs/diffusion.yaml)")
    train.add_argument("--epochs", type=int, default=None, help="default 8 (cpu), 4 (diffusion)")
    train.add_argument("--workers", type=int, default=2)
    train.add_argument("--cpus-per-worker", dest="cpus_per_worker", type=float, default=1.0)
    train.add_argument("--base-style", dest="base_style", default=None,
                       help="cpu: the built-in style it starts from (default corporate_headshot); diffusion: the "
                            "recipe whose base model it is trained on (default: the book's custom style)")
    train.set_defaults(func=_cmd_styles_train)
    listing = styles_sub.add_parser("list", help="an account's style tokens and unfinished jobs")
    listing.add_argument("--account", required=True)
    listing.set_defaults(func=_cmd_styles_list)
    batch = sub.add_parser("batch", help="avatars for a folder or object-store prefix of photos (Ray Data)")
    batch.add_argument("source", help="local folder, s3://bucket/prefix or gs://bucket/prefix of photos")
    batch.add_argument("--out", required=True, help="where avatars/, thumbnails/ and results/*.parquet go")
    batch.add_argument("--style")
    batch.add_argument("--platform", default="generic")
    batch.add_argument("--palette")
    batch.add_argument("--background")
    batch.add_argument("--resolution", choices=("standard", "high"), default="standard")
    batch.add_argument("--style-intensity", dest="style_intensity", type=float)
    batch.add_argument("--no-match-lighting", dest="no_match_lighting", action="store_true",
                       help="keep each photo's own exposure and white balance")
    batch.add_argument("--actors", type=int, default=2, help="actor pool size (one model copy each)")
    batch.add_argument("--cpus-per-actor", dest="cpus_per_actor", type=float, default=1.0)
    batch.add_argument("--batch-size", dest="batch_size", type=int, default=4)
    batch.add_argument("--overwrite", action="store_true", help="redo photos whose avatar already exists")
    batch.add_argument("--limit", type=int, default=None, help="at most this many photos this run")
    batch.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    batch.add_argument("--num-cpus", dest="num_cpus", type=int, default=None, help="local Ray size")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(func=_cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AvatarError as exc:
        print(json.dumps(exc.to_body()), file=sys.stderr)
        return 2
    except SharedSecretMissing as exc:
        print(f"avatar: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
