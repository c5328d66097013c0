"""Style training cost: seconds per epoch for 50 and 200 examples on 2 Ray Train workers, and token load times.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/style_training.py [--epochs 4] [--sizes 50,200]

Time to first avatar with a fresh vs warm token is measured through the service; `time_token_load` here gives the
token part of it (storage read + decode vs cache hit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatar.store.accounts import open_account_store  # noqa: E402
from avatar.store.storage import Storage  # noqa: E402
from avatar.tokens import time_token_load  # noqa: E402
from training.dataset import make_demo_examples  # noqa: E402
from training.records import ProgressWriter  # noqa: E402
from training.train_style import TrainConfig, run_training  # noqa: E402


def bench_size(root: Path, count: int, epochs: int, workers: int) -> dict[str, float]:
    images = root / f"examples-{count}"
    make_demo_examples(images, count=count, seed=count)
    accounts_uri = f"sqlite:///{root / 'accounts.sqlite3'}"
    account_id, _ = open_account_store(accounts_uri).create_account(f"bench-{count}")
    cfg = TrainConfig(account_id=account_id, images=str(images), storage_uri=str(root / "storage"),
                      accounts_uri=accounts_uri, epochs=epochs, num_workers=workers)
    t0 = time.perf_counter()
    result = run_training(cfg)
    total = time.perf_counter() - t0
    status = ProgressWriter(cfg.storage_uri, account_id, cfg.job_id).read()
    loads = time_token_load(Storage(cfg.storage_uri), account_id, result.token_id)
    return {"examples": count, "workers": workers, "epochs": epochs, "total_s": round(total, 2),
            "per_epoch_s": round(result.metrics["elapsed_s"] / epochs, 2),     # wall time, reports included
            "compute_per_epoch_s": round(result.metrics["epoch_s"], 2),
            "startup_and_publish_s": round(total - result.metrics["elapsed_s"], 2),
            "val_loss": round(result.metrics["val_loss"], 4),
            "identity_loss": round(result.metrics["identity_loss"], 4),
            "token_cold_ms": round(loads["cold_ms"], 2), "token_warm_ms": round(loads["warm_ms"], 4),
            "status_epoch": status.epoch if status else -1}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sizes", default="50,200")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    import ray
    temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, object_store_memory=256 * 2**20,
             _temp_dir=temp, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="style-bench-"))
    try:
        for count in (int(s) for s in args.sizes.split(",")):
            print(json.dumps(bench_size(root, count, args.epochs, args.workers)), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
