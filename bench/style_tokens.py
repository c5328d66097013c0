"""Time to the first avatar with a fresh custom style token (cold: StyleApply loads it through Serve model
multiplexing) against a warm one (already in the replica), through HTTP on the embedded service (CPU profile).

    RAY_AUTH_MODE=disabled .venv/bin/python bench/style_tokens.py [--tokens 5] [--repeats 3]

One token is trained (2 short epochs, 1 worker) and published again under fresh ids, so every fresh token is a
real stored token the replica has never seen: its first request reads and decodes it. Prints one JSON line per
group: end-to-end latency (client side) and the replica's token load time (`stage_ms.style_token_load`).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(name: str, rows: list[dict[str, float]]) -> dict[str, object]:
    total = [r["total_ms"] for r in rows]
    load = [r["load_ms"] for r in rows if r["load_ms"] is not None]
    style = [r["style_ms"] for r in rows]
    out: dict[str, object] = {"group": name, "n": len(rows), "latency_p50_ms": round(statistics.median(total), 1),
                              "latency_min_ms": round(min(total), 1), "latency_max_ms": round(max(total), 1),
                              "style_apply_p50_ms": round(statistics.median(style), 1)}
    if load:
        out["token_load_p50_ms"] = round(statistics.median(load), 3)
        out["token_load_max_ms"] = round(max(load), 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=5, help="fresh tokens (one cold request each)")
    p.add_argument("--repeats", type=int, default=3, help="warm requests per token")
    args = p.parse_args()

    data = Path(tempfile.mkdtemp(prefix="avatar-tokbench-"))
    accounts_uri = f"sqlite:///{data}/accounts.sqlite3"
    os.environ.update({"AVATAR_DATA_DIR": str(data), "AVATAR_SIGNING_SECRET": "bench",
                       "AVATAR_ACCOUNTS_URI": accounts_uri, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"})
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import httpx
    import numpy as np
    from PIL import Image
    from ray import serve
    from skimage import data as skdata

    from avatar.store.accounts import open_account_store
    from avatar.store.storage import Storage
    from avatar.tokens import load_style_token, new_token_id, save_token
    from service.launcher import deploy, init_local_ray
    from training.dataset import make_demo_examples
    from training.train_style import TrainConfig, run_training

    temp = tempfile.mkdtemp(prefix="rk", dir="/tmp")
    init_local_ray(num_cpus=2, temp_dir=temp)
    store = open_account_store(accounts_uri)
    account, key = store.create_account("bench")
    storage_uri = str(data / "storage")
    try:
        make_demo_examples(data / "examples", count=50, size=200)
        t0 = time.perf_counter()
        trained = run_training(TrainConfig(account_id=account, images=str(data / "examples"), storage_uri=storage_uri,
                                           accounts_uri=accounts_uri, epochs=2, steps_per_epoch=8, num_workers=1,
                                           cpus_per_worker=0.5, max_failures=0))
        train_s = time.perf_counter() - t0
        storage = Storage(storage_uri)
        base = load_style_token(storage, account, trained.token_id)
        tokens = []
        for _ in range(args.tokens):
            base.token_id, base.manifest = new_token_id(), {k: v for k, v in base.manifest.items() if k != "sha256"}
            save_token(storage, base)
            store.register_style(account, base.token_id, base.manifest)
            tokens.append(base.token_id)

        port = _free_port()
        deploy(profile="cpu", port=port)
        buf = io.BytesIO()
        Image.fromarray(np.asarray(skdata.astronaut())).save(buf, format="JPEG", quality=92)
        image = base64.b64encode(buf.getvalue()).decode()
        headers = {"authorization": f"Bearer {key}"}

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            def generate(style: str) -> dict[str, float]:
                t = time.perf_counter()
                resp = http.post("/v1/avatar/generate", json={"image": image, "style": style}, headers=headers)
                total = (time.perf_counter() - t) * 1000
                resp.raise_for_status()
                stages = resp.json()["stage_ms"]
                return {"total_ms": total, "load_ms": stages.get("style_token_load"),
                        "style_ms": stages.get("style_apply", 0.0)}

            for _ in range(2):   # warm the pipeline itself (first requests pay lazy initialisation)
                generate("corporate_headshot")
            builtin = [generate("corporate_headshot") for _ in range(args.repeats)]
            cold, warm = [], []
            for token in tokens:
                cold.append(generate(token))
                warm.extend(generate(token) for _ in range(args.repeats))
        print(json.dumps({"train_s": round(train_s, 1), "tokens": args.tokens, "repeats": args.repeats}), flush=True)
        for name, rows in (("built_in", builtin), ("fresh_token_cold", cold), ("warm_token", warm)):
            print(json.dumps(_summary(name, rows)), flush=True)
    finally:
        serve.shutdown()
        import ray
        ray.shutdown()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
