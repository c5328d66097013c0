"""The deployable artefacts stay consistent: serve_config.yaml, the KubeRay manifest, the DAG and the CPU profile."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from service.config import CONFIG_PATH, app_config, apply_cpu_profile, deployment_options, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_rayservice_embeds_the_serve_config():
    manifest = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService"
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == load_config(), \
        "k8s/rayservice.yaml is stale: run `python k8s/render.py`"
    groups = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups)


def test_every_pod_gives_the_proxy_the_body_caps_of_the_config():
    """The proxies of a cluster enforce the caps `make run` enforces (not a fallback read of some other config)."""
    from service.config import proxy_environment
    from service.launcher import ray_environment
    from service.memory import MALLOC_ENV
    manifest = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    spec = manifest["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    expected = proxy_environment(load_config())
    assert json.loads(expected["AVATAR_PROXY_UPLOAD_ROUTES"])["POST /v1/batches"] > int(
        expected["AVATAR_PROXY_MAX_BODY_BYTES"])
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert {k: env.get(k) for k in expected} == expected
        assert env["RAY_SERVE_LOG_TO_STDERR"] == "0"   # as `make run` sets them, and glibc's heap settings too
        assert {k: env.get(k) for k in MALLOC_ENV} == MALLOC_ENV == {k: ray_environment()[k] for k in MALLOC_ENV}


def test_every_stage_is_configured_with_its_own_scaling_and_gpu_share():
    from avatar.flow.names import Stage
    from deployments.ingress import AvatarIngress
    from deployments.job_runner import JobRunner
    app = app_config(load_config())
    configured = {d["name"]: d for d in app["deployments"]}
    assert set(configured) == {s.deployment for s in Stage} | {AvatarIngress.name, JobRunner.name}
    for name in ("FaceDetect", "StyleApply", "BgGenerate", "DetailEnhance", "QualityGate"):
        dep = configured[name]
        assert 0 < dep["ray_actor_options"]["num_gpus"] < 1, name
        assert dep["autoscaling_config"]["max_replicas"] >= dep["autoscaling_config"]["min_replicas"]
    gpu_total = sum(d["ray_actor_options"].get("num_gpus", 0) for d in configured.values())
    assert gpu_total <= 1.0   # one replica of each stage fits a single GPU


def test_cpu_profile_removes_gpu_asks_without_touching_the_file():
    config = load_config()
    cpu = apply_cpu_profile(config, 0.1)
    for dep in app_config(cpu)["deployments"]:
        assert dep["ray_actor_options"]["num_gpus"] == 0 and dep["ray_actor_options"]["num_cpus"] == 0.1
    assert any(d["ray_actor_options"].get("num_gpus") for d in app_config(load_config(CONFIG_PATH))["deployments"])
    opts = deployment_options(app_config(cpu), {"FaceDetect": {"work_size": 384}})
    assert opts["FaceDetect"]["user_config"]["work_size"] == 384
    assert opts["FaceDetect"]["user_config"]["min_face_coverage"] == 0.15


def test_cpu_profile_caps_autoscaling_to_fit_the_node():
    config = load_config()
    for cpus, ceiling in ((2, 1), (8, 4)):
        deployments = app_config(apply_cpu_profile(config, 0.1, node_cpus=cpus))["deployments"]
        most = {}
        for dep in deployments:
            scaling = dep.get("autoscaling_config")
            if scaling:
                assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"] <= ceiling, (cpus, dep["name"], scaling)
            most[dep["name"]] = scaling["max_replicas"] if scaling else dep["num_replicas"]
            assert most[dep["name"]] <= ceiling, (cpus, dep["name"])
        assert sum(most[d["name"]] * d["ray_actor_options"]["num_cpus"]
                   for d in deployments) <= cpus   # every replica autoscaling may ask for can be placed


def test_every_stage_queue_is_bounded():
    for dep in app_config(load_config())["deployments"]:
        assert 0 < dep["max_queued_requests"] <= 64, dep["name"]


def test_graph_binds_the_ingress_over_all_stages():
    from graph import build_app
    app = build_app({"StyleApply": {"user_config": {"engine": {"name": "cpu"}}}})
    assert app is not None


def _built(options: dict | None = None) -> dict:
    """The app's deployments by name, as Serve would deploy them (no cluster needed)."""
    from ray.serve._private.build_app import build_app as built

    from graph import build_app
    return {d.name: d for d in built(build_app(options), name="avatar").deployments}


GPU_STAGES = ("FaceDetect", "StyleApply", "BgGenerate", "DetailEnhance", "QualityGate")


def test_each_stage_declares_its_resources_and_scaling_in_code():
    """Without serve_config.yaml, each stage deployment still has its own GPU share (the production shape), a bounded
    queue and autoscaling: the file tunes them, the code is not a generic placeholder."""
    from avatar.flow.names import Stage
    deployments = _built()
    for stage in Stage:
        dep = deployments[stage.deployment]
        scaling = dep._deployment_config.autoscaling_config
        assert dep.ray_actor_options["num_cpus"] > 0 and 0 < dep.max_queued_requests <= 64, stage
        assert scaling is not None and 1 <= scaling.min_replicas <= scaling.max_replicas, stage
        assert (0 < dep.ray_actor_options.get("num_gpus", 0) < 1) == (stage.deployment in GPU_STAGES), stage
    assert sum(d.ray_actor_options.get("num_gpus", 0) for d in deployments.values()) <= 1.0


def test_the_config_overrides_the_code():
    config = apply_cpu_profile(load_config(), 0.1, node_cpus=2)
    deployments = _built(deployment_options(app_config(config), {"FaceDetect": {"work_size": 384}}))
    for name in GPU_STAGES:
        assert deployments[name].ray_actor_options == {"num_cpus": 0.1, "num_gpus": 0}, name
        assert deployments[name]._deployment_config.autoscaling_config.max_replicas == 1, name
    assert deployments["FaceDetect"].user_config == {"work_size": 384, "min_face_coverage": 0.15, "models": {},
                                                     "face_count_tiles": "auto", "identity_model": "sface"}


def test_the_shipped_config_validates():
    from service.config import check_user_configs
    check_user_configs(app_config(load_config()))   # raises ConfigError naming the deployment and field


@pytest.mark.parametrize("deployment, user_config, named", [
    ("StyleApply", {"engine": {"nmae": "cpu"}}, "StyleApply.user_config.engine.nmae"),
    ("QualityGate", {"gate": {"nsfw_treshold": 0.3}}, "QualityGate.user_config.gate.nsfw_treshold"),
    ("FaceDetect", {"work_size": "large"}, "FaceDetect.user_config.work_size"),
    ("FaceDetect", {"models": {"face_detectr": "/x"}}, "FaceDetect.user_config.models"),
    ("AvatarIngress", {"request_timout_s": 5}, "AvatarIngress.user_config.request_timout_s"),
    ("AvatarIngress", {"styles": {"max_upload_byte": 5}}, "AvatarIngress.user_config.styles.max_upload_byte"),
    ("SaveAvatar", {"png_compress_level": 12}, "SaveAvatar.user_config.png_compress_level"),
])
def test_a_typo_in_the_serve_config_fails_naming_deployment_and_field(tmp_path, deployment, user_config, named):
    from avatar.flow.assembly import ConfigError
    from service.config import check_user_configs
    from service.launcher import deploy
    config = load_config()
    for dep in app_config(config)["deployments"]:
        if dep["name"] == deployment:
            dep["user_config"] = {**dep.get("user_config", {}), **user_config}
    with pytest.raises(ConfigError) as err:
        check_user_configs(app_config(config))
    assert named in str(err.value)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as err:   # the launcher refuses before starting anything
        deploy(profile="cpu", config_path=str(path))
    assert named in str(err.value)


def test_an_unknown_deployment_name_is_refused():
    from avatar.flow.assembly import ConfigError
    from service.config import check_user_configs
    with pytest.raises(ConfigError, match="StyleAply"):
        check_user_configs({"deployments": [{"name": "StyleAply", "user_config": {}}]})


def test_a_replica_refuses_an_invalid_user_config_at_start_up():
    """`serve deploy` bypasses the launcher: the replica itself fails its start naming the field."""
    from avatar.flow.assembly import ConfigError
    from deployments.style_apply import StyleApply
    with pytest.raises(ConfigError, match=r"StyleApply\.user_config\.batch\.max_batch_size"):
        StyleApply.func_or_class().reconfigure({"batch": {"max_batch_size": 0}})


def test_the_launcher_applies_the_configs_http_options():
    """`request_timeout_s` and `keep_alive_timeout_s` of serve_config.yaml reach serve.start, on the given address."""
    from service.launcher import http_options
    options = http_options(load_config(), "127.0.0.1", 8123)
    assert options["host"] == "127.0.0.1" and options["port"] == 8123
    assert options["request_timeout_s"] == 90 and options["keep_alive_timeout_s"] == 15


def test_the_embedded_ray_gets_the_proxy_guard_and_no_auth_opt_out(monkeypatch):
    from service.launcher import ray_environment
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    env = ray_environment()
    assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "service.proxy_guard:proxy_middlewares"
    assert env.get("RAY_AUTH_MODE") != "disabled" and env["RAY_AUTH_TOKEN_PATH"]
    assert env["RAY_SERVE_LOG_TO_STDERR"] == "0"   # Serve's log files only: no second copy through the log monitor
    uploads = json.loads(env["AVATAR_PROXY_UPLOAD_ROUTES"])
    assert int(env["AVATAR_PROXY_MAX_BODY_BYTES"]) > 20 * 2**20
    assert uploads["POST /v1/styles"] > 200 * 2**20 and uploads["POST /v1/batches"] > 256 * 2**20


# ------------------------------------------------------------------------------------------ shared state on k8s
def _pod_containers(manifest: dict) -> tuple[list[dict], list[dict]]:
    cluster = manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]], [g["template"]["spec"] for g in groups]


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayjob-style-training.yaml", "rayjob-batch.yaml"])
def test_every_pod_takes_the_shared_state_and_keeps_none(name):
    """Head and workers read the same ConfigMap and Secret; no secret is written in the manifest; no pod has a
    volume that would hold state of its own (only emptyDir scratch)."""
    containers, specs = _pod_containers(yaml.safe_load((ROOT / "k8s" / name).read_text()))
    for container in containers:
        sources = container.get("envFrom", [])
        assert {"configMapRef": {"name": "avatar-config"}} in sources
        assert {"secretRef": {"name": "avatar-shared"}} in sources
        literal = {e["name"] for e in container.get("env", []) if "value" in e}
        assert not literal & {"AVATAR_DATABASE_URL", "AVATAR_SIGNING_SECRET", "AVATAR_ACCOUNT_PEPPER",
                              "AWS_SECRET_ACCESS_KEY", "AVATAR_ACCOUNTS_URI"}
    for spec in specs:
        for volume in spec.get("volumes", []):
            assert set(volume) == {"name", "emptyDir"}, volume


def test_the_shared_state_manifest_passes_the_start_up_check(monkeypatch, tmp_path):
    """The ConfigMap and Secret keys, as envFrom gives them to a pod, are a configuration the service starts with:
    state is shared, and every secret the start-up check asks for is there."""
    from avatar.settings import settings
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "k8s" / "shared-state.yaml").read_text())}
    variables = {**docs["ConfigMap"]["data"], **docs["Secret"]["stringData"]}
    for name in list(os.environ):
        if name.startswith("AVATAR_"):
            monkeypatch.delenv(name)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path))
    env = settings()
    assert set(env.shared_state) == {"AVATAR_DATABASE_URL", "AVATAR_STORAGE_URI", "AVATAR_USAGE_URI"}
    env.check_shared_secrets()
    monkeypatch.delenv("AVATAR_ACCOUNT_PEPPER")
    with pytest.raises(RuntimeError, match="AVATAR_ACCOUNT_PEPPER"):
        settings().check_shared_secrets()
