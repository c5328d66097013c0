"""The deployable artefacts stay consistent: serve_config.yaml, the KubeRay manifest, the DAG and the CPU profile."""

from __future__ import annotations

from pathlib import Path

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


def test_every_stage_is_configured_with_its_own_scaling_and_gpu_share():
    from service.graph import STAGES
    from service.ingress import AvatarIngress
    app = app_config(load_config())
    configured = {d["name"]: d for d in app["deployments"]}
    assert set(configured) == {s.name for s in STAGES} | {AvatarIngress.name}
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


def test_graph_binds_the_ingress_over_all_stages():
    from service.graph import build_app
    app = build_app({"StyleApply": {"user_config": {"engine": {"name": "cpu"}}}})
    assert app is not None
