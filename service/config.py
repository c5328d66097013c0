"""serve_config.yaml: loading it, checking every deployment's `user_config` against its model before anything
starts, and the CPU profile for machines without a GPU. The ingress's own `user_config` model lives here too."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avatar.billing import AccountsConfig
from avatar.flow.assembly import ConfigError, describe_invalid, stage_config
from avatar.flow.names import Stage
from service import CONFIG_PATH
from service.admission import AdmissionConfig

INGRESS = "AvatarIngress"
RUNNER = "JobRunner"
FRAMING_BYTES = 2**20   # what Serve's proxy allows on top of a payload cap: multipart boundaries and part headers


class StylesConfig(BaseModel):
    """Custom styles over HTTP (docs/custom_styles.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    upload_route: ClassVar[str] = "POST /v1/styles"   # takes `max_upload_bytes` of examples

    training: dict[str, Any] = Field(default_factory=dict, description="trainer defaults for jobs started over HTTP")
    max_upload_bytes: int = Field(200 * 2**20, gt=0, description="whole multipart upload of examples")
    max_running_jobs: int = Field(1, ge=1, description="training jobs one account runs at once")
    max_queued_jobs: int = Field(2, ge=0, description="further jobs one account may have waiting (429 beyond)")
    images_uri_prefixes: list[str] = Field(default_factory=list,
                                           description="where JSON images_uri may point; {account} expands")


class BatchesConfig(BaseModel):
    """Team batches over HTTP (`POST /v1/batches`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    upload_route: ClassVar[str] = "POST /v1/batches"   # takes `max_upload_bytes` of photos (multipart) or JSON

    max_items: int = Field(500, ge=1, le=100_000, description="members in one batch")
    max_upload_bytes: int = Field(256 * 2**20, gt=0, description="whole request (JSON or multipart)")


class RunnerConfig(BaseModel):
    """`JobRunner.user_config`: how the runner of jobs and batches works through the job store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrency: int = Field(4, ge=1, le=256, description="items in flight through the stage graph")
    lease_s: float = Field(60.0, gt=0, description="an item's claim; renewed while it runs, taken over after")
    renew_every_s: float = Field(2.0, gt=0)
    poll_s: float = Field(0.5, gt=0, description="how often an idle runner looks for work")
    max_attempts: int = Field(3, ge=1, description="claims of one item before it fails (crashes, restarts)")
    retry_delay_s: float = Field(2.0, ge=0, description="wait before a transiently failed item runs again")
    delivery_concurrency: int = Field(8, ge=1, le=256, description="webhook sends in flight (each bounded by "
                                                                   "AVATAR_WEBHOOK_TIMEOUT_S)")
    delivery_per_account: int = Field(2, ge=1, description="webhook sends of one account in flight, over every "
                                                           "runner: a slow receiver holds its own account's slots")
    sweep_every_s: float = Field(300.0, gt=0, description="how often expired jobs and outputs are deleted")
    contact_sheet_tile: int = Field(200, ge=48, le=800)
    usage_flush_interval_s: float = Field(30.0, ge=0, description="the runner's usage rows reach the log at least "
                                                                  "this often")


def runner_config(raw: dict[str, Any] | None) -> RunnerConfig:
    try:
        return RunnerConfig.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(describe_invalid(RUNNER, exc)) from None


class IngressConfig(BaseModel):
    """`AvatarIngress.user_config`: admission limits and policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_timeout_s: float = Field(60.0, gt=0)
    max_body_bytes: int = Field(20 * 2**20, gt=0)
    public_url: str = Field("", description="base of signed URLs; default AVATAR_PUBLIC_URL, else the address the "
                                            "request arrived on (never the client's Host header)")
    require_api_key: bool = Field(False, description="built-in styles too need `Authorization: Bearer <api key>`")
    usage_flush_interval_s: float = Field(30.0, ge=0)
    trusted_proxy_headers: bool = Field(False, description="signed URLs may use X-Forwarded-Proto/-Host (only "
                                                           "behind a proxy that sets them) when no public_url is set")
    admission: AdmissionConfig = AdmissionConfig()
    styles: StylesConfig = StylesConfig()
    accounts: AccountsConfig = Field(AccountsConfig(), description="credits, rate limits and plans (avatar.billing)")
    batches: BatchesConfig = BatchesConfig()

    def upload_routes(self) -> dict[str, int]:
        """The routes that legitimately take large uploads, each with the whole body it accepts
        (`{"POST /v1/batches": bytes}`): every section that names an `upload_route`. The one table Serve's proxy guard
        caps bodies by (`proxy_body_caps`); every other route gets `max_body_bytes`."""
        sections = (getattr(self, name) for name in type(self).model_fields)
        return {section.upload_route: section.max_upload_bytes for section in sections
                if isinstance(getattr(type(section), "upload_route", None), str)}


def ingress_config(raw: dict[str, Any] | None) -> IngressConfig:
    try:
        return IngressConfig.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(describe_invalid(INGRESS, exc)) from None


def check_user_configs(app: dict[str, Any]) -> None:
    """Every deployment of the app is known and its `user_config` validates; ConfigError names the first problem's
    deployment and field (`StyleApply.user_config.engine.nmae: Extra inputs are not permitted`)."""
    stages = {stage.deployment: stage for stage in Stage}
    for dep in app.get("deployments", []):
        name = dep.get("name")
        if name == INGRESS:
            ingress_config(dep.get("user_config"))
        elif name == RUNNER:
            runner_config(dep.get("user_config"))
        elif name in stages:
            stage_config(stages[name], dep.get("user_config"))
        else:
            known = ", ".join([INGRESS, RUNNER, *stages])
            raise ConfigError(f"invalid serve config: unknown deployment {name!r}; known: {known}")


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


def proxy_body_caps(config: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """What Serve's proxy lets through, from the ingress's `user_config`: the body cap of every route, and each upload
    route's own (`IngressConfig.upload_routes`), both with room for multipart framing."""
    raw = next((d.get("user_config") for d in app_config(config)["deployments"] if d["name"] == INGRESS), None)
    ingress = ingress_config(raw)
    uploads = {route: cap + FRAMING_BYTES for route, cap in ingress.upload_routes().items()}
    return ingress.max_body_bytes + FRAMING_BYTES, uploads


def proxy_environment(config: dict[str, Any]) -> dict[str, str]:
    """The proxy guard's variables (`service.proxy_guard`) for `config`: set by the launcher on the local Ray and
    written into every pod by k8s/render.py, so the proxy never has to read the config itself."""
    max_body, uploads = proxy_body_caps(config)
    return {"AVATAR_PROXY_MAX_BODY_BYTES": str(max_body),
            "AVATAR_PROXY_UPLOAD_ROUTES": json.dumps(uploads, sort_keys=True)}   # {"POST /v1/batches": 269484032}


def apply_cpu_profile(config: dict[str, Any], cpus_per_replica: float = 0.1, node_cpus: float | None = None
                      ) -> dict[str, Any]:
    """A copy with no GPU asks and small CPU asks, so every replica fits a small CPU machine, and autoscaling ceilings
    that fit the node: one replica per deployment for each 2 cores (more replicas of CPU-bound stages than cores
    add queueing, not throughput, and would wait for CPU that never frees)."""
    config = copy.deepcopy(config)
    ceiling = max(1, int((node_cpus or os.cpu_count() or 2) // 2))
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            actor = dict(dep.get("ray_actor_options") or {})
            actor["num_gpus"] = 0
            actor["num_cpus"] = cpus_per_replica
            dep["ray_actor_options"] = actor
            scaling = dep.get("autoscaling_config")
            if scaling:
                top = min(int(scaling.get("max_replicas", ceiling)), ceiling)
                dep["autoscaling_config"] = {**scaling, "max_replicas": top,
                                             "min_replicas": min(int(scaling.get("min_replicas", 1)), top)}
                dep["autoscaling_config"].pop("initial_replicas", None)
            elif "num_replicas" in dep:
                dep["num_replicas"] = min(int(dep["num_replicas"]), ceiling)
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
