"""Starts the embedded service: a local Ray, Serve on host:port, the app deployed from serve_config.yaml."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Any

from pathlib import Path

from avatar.settings import shared_secret_file
from service.config import (CONFIG_PATH, app_config, apply_cpu_profile, check_user_configs, deployment_options,
                            load_config, proxy_environment)
from service.memory import MALLOC_ENV
from service.proxy_guard import CALLBACK, CALLBACK_ENV
from service.serve_imports import HOOK as SKIP_PANDAS_HOOK
from training.gate import node_resources


def init_local_ray(num_cpus: int | None = None, temp_dir: str | None = None, dashboard: bool = False,
                   object_store_mb: int = 512, config_path: str = str(CONFIG_PATH)) -> None:
    """A local Ray of its own (never attaches to a cluster that happens to run), sized for a small machine.

    Ray's GCS, raylet and worker ports listen on every interface in Ray 2.60 whatever the node address, so the
    embedded service keeps Ray's token authentication on (a token generated once per user, 0600) and advertises the
    node on loopback; the dashboard, when asked for, binds to 127.0.0.1. The environment set here is inherited by
    every Ray process of the node: the Serve proxy's guard (`service.proxy_guard`) with body caps from the config, and
    a malloc arena cap so replicas give memory back after large inputs."""
    import ray
    for key, value in ray_environment(config_path).items():
        os.environ.setdefault(key, value)
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        logging.getLogger("avatar.launcher").warning(
            "RAY_AUTH_MODE=disabled: Ray's ports accept anyone who can reach this machine")
    kwargs: dict[str, Any] = {"address": "local", "include_dashboard": dashboard, "log_to_driver": False,
                              "object_store_memory": object_store_mb * 2**20, "_node_ip_address": "127.0.0.1",
                              "resources": node_resources(num_cpus),
                              "runtime_env": {"worker_process_setup_hook": SKIP_PANDAS_HOOK}}
    if dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    for attempt in range(3):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            # Ray gives its raylet a fixed 30 s to register; on a machine busy with other work that can pass
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()


def ray_environment(config_path: str = str(CONFIG_PATH)) -> dict[str, str]:
    """Environment of the embedded Ray's processes (each key only where the caller has not set it)."""
    # RAY_AUTH_MODE stays unset: Ray then turns token authentication on for a new local cluster (and refreshes its
    # own configuration, which setting the variable here would not); an explicit RAY_AUTH_MODE=disabled is obeyed.
    env = {CALLBACK_ENV: CALLBACK, **MALLOC_ENV,   # glibc's heap settings of every process (service.memory)
           # Serve's replicas write each log line (an access line per request and stage) to their log file and, by
           # default, to stderr too, where Ray's log monitor tails it and publishes it through the GCS for a driver
           # that does not listen (log_to_driver is off): ~10 ms of CPU per avatar spent on duplicates
           "RAY_SERVE_LOG_TO_STDERR": "0"}
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        env["RAY_AUTH_TOKEN_PATH"] = str(ray_token_path())
    env.update(proxy_environment(load_config(config_path)))
    return env


def ray_token_path() -> Path:
    """The embedded Ray's auth token: generated once per user (atomically, 0600), the same for every local cluster
    this user starts, so concurrent starts never disagree."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "avatar-service"
    path = base / "ray_auth_token"
    shared_secret_file(path)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now: benchmarks and tests serve there, never on a fixed port another run may hold."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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

    from graph import build_app
    config = load_config(config_path)
    profile = resolve_profile(profile)
    if profile == "cpu":
        import ray
        node_cpus = ray.cluster_resources().get("CPU") if ray.is_initialized() else None
        config = apply_cpu_profile(config, cpus_per_replica, node_cpus)
    options = deployment_options(app_config(config), overrides)
    check_user_configs({"deployments": [{"name": n, "user_config": o.get("user_config")} for n, o in options.items()]})
    serve.start(http_options=http_options(config, host, port))
    app = build_app(options)
    serve.run(app, name="avatar", route_prefix="/")
    return profile


def http_options(config: dict[str, Any], host: str, port: int) -> dict[str, Any]:
    """The config's `http_options` (request_timeout_s, keep_alive_timeout_s, ...) on the given host and port."""
    options = dict(config.get("http_options") or {})
    options.update(host=host, port=port)
    return options


def serve_forever(host: str, port: int, profile: str, config_path: str, dashboard: bool) -> None:
    """Run until SIGINT/SIGTERM, then shut Serve and the local Ray down (no replicas left behind)."""
    import ray
    from ray import serve
    stop = threading.Event()
    init_local_ray(dashboard=dashboard, config_path=config_path)
    for sig in (signal.SIGINT, signal.SIGTERM):   # Ray replaces the default handlers; ours must win
        signal.signal(sig, lambda *_: stop.set())
    used = deploy(profile, config_path, host, port)
    print(f"avatar service ready on http://{host}:{port} (profile: {used}); Ctrl-C stops it", flush=True)
    stop.wait()
    print("shutting down", flush=True)
    serve.shutdown()
    ray.shutdown()
