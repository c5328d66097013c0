"""Starts the embedded service: a local Ray, Serve on host:port, the app deployed from serve_config.yaml."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from service.config import (CONFIG_PATH, app_config, apply_cpu_profile, check_user_configs, deployment_options,
                            load_config)


def init_local_ray(num_cpus: int | None = None, temp_dir: str | None = None, dashboard: bool = False,
                   object_store_mb: int = 512) -> None:
    """A local Ray of its own (never attaches to a cluster that happens to run), sized for a small machine."""
    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict[str, Any] = {"address": "local", "include_dashboard": dashboard, "log_to_driver": False,
                              "object_store_memory": object_store_mb * 2**20}
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    ray.init(**kwargs)


def resolve_profile(profile: str) -> str:
    if profile != "auto":
        return profile
    import ray
    return "gpu" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def deploy(profile: str = "auto", config_path: str = str(CONFIG_PATH), host: str = "127.0.0.1", port: int = 8000,
           overrides: dict[str, dict[str, Any]] | None = None, cpus_per_replica: float = 0.1) -> str:
    """Deploy the app on the already initialised Ray; returns the profile used. `overrides` go into user_configs.
    Refuses (SharedSecretMissing) when state is shared between nodes and a secret would be generated per node."""
    from ray import serve

    from avatar.settings import settings
    settings().check_shared_secrets()

    from service.graph import build_app
    config = load_config(config_path)
    profile = resolve_profile(profile)
    if profile == "cpu":
        config = apply_cpu_profile(config, cpus_per_replica)
    options = deployment_options(app_config(config), overrides)
    check_user_configs({"deployments": [{"name": n, "user_config": o.get("user_config")} for n, o in options.items()]})
    serve.start(http_options={"host": host, "port": port})
    app = build_app(options)
    serve.run(app, name="avatar", route_prefix="/")
    return profile


def serve_forever(host: str, port: int, profile: str, config_path: str, dashboard: bool) -> None:
    """Run until SIGINT/SIGTERM, then shut Serve and the local Ray down (no replicas left behind)."""
    import ray
    from ray import serve
    stop = threading.Event()
    init_local_ray(dashboard=dashboard)
    for sig in (signal.SIGINT, signal.SIGTERM):   # Ray replaces the default handlers; ours must win
        signal.signal(sig, lambda *_: stop.set())
    used = deploy(profile, config_path, host, port)
    print(f"avatar service ready on http://{host}:{port} (profile: {used}); Ctrl-C stops it", flush=True)
    stop.wait()
    print("shutting down", flush=True)
    serve.shutdown()
    ray.shutdown()
