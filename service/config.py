"""Reads serve_config.yaml for the embedded service and tests, applying the CPU profile where there is no GPU."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CONFIG_PATH = Path(__file__).resolve().parent.parent / "serve_config.yaml"

# Deployment fields `Deployment.options()` accepts, as written in serve_config.yaml.
_OPTION_FIELDS = ("num_replicas", "max_ongoing_requests", "max_queued_requests", "autoscaling_config",
                  "ray_actor_options", "user_config", "health_check_period_s", "health_check_timeout_s",
                  "graceful_shutdown_timeout_s", "graceful_shutdown_wait_loop_s", "max_constructor_retry_count")


def load_config(path: str | Path = CONFIG_PATH) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh)


def app_config(config: dict[str, Any], name: str = "avatar") -> dict[str, Any]:
    for app in config["applications"]:
        if app["name"] == name:
            return app
    raise KeyError(f"no application {name!r} in the serve config")


def apply_cpu_profile(config: dict[str, Any], cpus_per_replica: float = 0.1) -> dict[str, Any]:
    """A copy with no GPU asks and small CPU asks, so every replica (and autoscaled ones) fits a small CPU machine."""
    config = copy.deepcopy(config)
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            actor = dict(dep.get("ray_actor_options") or {})
            actor["num_gpus"] = 0
            actor["num_cpus"] = cpus_per_replica
            dep["ray_actor_options"] = actor
    return config


def deployment_options(app: dict[str, Any], overrides: dict[str, dict[str, Any]] | None = None
                       ) -> dict[str, dict[str, Any]]:
    """Per-deployment `.options()` from the config, with `overrides` merged into each deployment's user_config."""
    result: dict[str, dict[str, Any]] = {}
    for dep in app.get("deployments", []):
        opts = {k: copy.deepcopy(dep[k]) for k in _OPTION_FIELDS if k in dep}
        extra = (overrides or {}).get(dep["name"])
        if extra:
            opts["user_config"] = {**opts.get("user_config", {}), **extra}
        result[dep["name"]] = opts
    return result
