"""The stage table: every stage module is found and named once, the names, the flow, the config table and the Serve
graph derive from it, and a stage added as one core module and one deployment module (plus its YAML entry) runs in
the flow with nothing else edited.

The added stage runs in a copy of the source tree in a subprocess: stage modules are found when `avatar.stages` is
first imported, so the extended table needs a fresh interpreter, and the copy keeps this checkout untouched.
"""

from __future__ import annotations

import json
import os
import pkgutil
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import avatar.stages as stage_package
from avatar.flow.assembly import STAGES
from avatar.flow.names import FLOW, RENDER_STAGES, Stage
from avatar.stages import DEFINITIONS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------------------------------------ the table itself
def test_every_stage_module_is_defined_under_its_name():
    modules = {m.name for m in pkgutil.iter_modules(stage_package.__path__) if not m.name.startswith("_")}
    assert modules == {d.name for d in DEFINITIONS} and len(modules) == 7
    for definition in DEFINITIONS:
        module = f"avatar.stages.{definition.name}"
        assert definition.config.__module__ == module and definition.build.__module__ == module


def test_names_flow_and_config_table_derive_from_the_definitions():
    assert [s.value for s in Stage] == [d.name for d in DEFINITIONS]
    assert list(STAGES) == list(Stage) and all(STAGES[Stage(d.name)] is d for d in DEFINITIONS)
    assert (FLOW.load, FLOW.detect, FLOW.gate, FLOW.save) == (Stage.LOAD_PHOTO, Stage.FACE_DETECT,
                                                              Stage.QUALITY_GATE, Stage.SAVE_AVATAR)
    assert FLOW.render == (Stage.STYLE_APPLY, Stage.BG_GENERATE, Stage.DETAIL_ENHANCE)   # the order the flow had
    assert RENDER_STAGES == (*FLOW.render, Stage.QUALITY_GATE)
    assert Stage.DETAIL_ENHANCE.deployment == "DetailEnhance"


def test_every_stage_has_its_deployment_module_and_the_graph_binds_them():
    from ray.serve._private.build_app import build_app as built

    from graph import build_app, stage_deployment
    for stage in Stage:
        deployment = stage_deployment(stage)
        assert deployment.name == stage.deployment
        assert deployment.func_or_class.__module__ == f"deployments.{stage.value}"
        assert deployment.func_or_class.stage_name is stage
    names = {d.name for d in built(build_app(), name="avatar").deployments}
    assert names == {s.deployment for s in Stage} | {"AvatarIngress", "JobRunner"}


# ------------------------------------------------------------------------------- a stage added from outside, in a copy
STAMP = '''
    """Stamp: a made-up render stage after DetailEnhance that notes its label and the stages timed before it."""

    from __future__ import annotations

    from avatar.job import AvatarJob
    from avatar.stages import Role, StageConfig, StageDefinition, timed

    NAME = "stamp"


    class StampConfig(StageConfig):
        label: str = "stamped"


    class StampStage:
        name = NAME

        def __init__(self, label: str) -> None:
            self.label = label

        def run(self, job: AvatarJob) -> AvatarJob:
            with timed(job, self.name):
                job.versions["stamp"] = self.label
                job.versions["stamp_after"] = ",".join(k for k in job.timings if k != "fetch")
            return job


    def stamp_stage(cfg: StampConfig) -> StampStage:
        return StampStage(cfg.label)


    STAGE = StageDefinition(NAME, Role.RENDER, StampConfig, stamp_stage, order=40)
'''

STAMP_DEPLOYMENT = '''
    from ray import serve

    from avatar.flow.names import Stage
    from deployments.stage import StageReplica


    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=4, max_queued_requests=32)
    class Stamp(StageReplica):
        stage_name = Stage.STAMP
'''

STAMP_YAML = {"name": "Stamp", "max_ongoing_requests": 4, "max_queued_requests": 32,
              "ray_actor_options": {"num_cpus": 0.25}, "user_config": {"label": "from the config"}}

PROBE = '''
    import io, json, sys
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from skimage import data

    import avatar
    from avatar.contracts import GenerateRequest, parse_request
    from avatar.flow.assembly import ConfigError
    from avatar.flow.local import LocalPipeline
    from avatar.flow.names import FLOW, Stage
    from avatar.job import PhotoInput
    from service.config import app_config, check_user_configs, load_config

    assert Path(avatar.__file__).is_relative_to(Path.cwd()), avatar.__file__   # the copy, not the checkout
    out = {"stages": [s.value for s in Stage], "render": [s.value for s in FLOW.render],
           "deployment": Stage.STAMP.deployment}
    app = app_config(load_config("serve_config.yaml"))
    check_user_configs(app)
    stamp = next(d for d in app["deployments"] if d["name"] == "Stamp")
    try:
        check_user_configs({"deployments": [{**stamp, "user_config": {"lable": "x"}}]})
    except ConfigError as exc:
        out["typo"] = str(exc)
    from ray.serve._private.build_app import build_app
    from graph import build_app as graph_app
    out["bound"] = sorted(d.name for d in build_app(graph_app(), name="avatar").deployments)

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG", quality=92)
    configs = {"save_avatar": {"storage_uri": sys.argv[1]}, "stamp": stamp["user_config"]}
    with LocalPipeline(configs=configs) as pipeline:
        request = parse_request(GenerateRequest, {"image": "", "style": "corporate_headshot", "platform": "linkedin"})
        job = pipeline.generate(request, PhotoInput(data=buf.getvalue()))
        saved = Image.open(io.BytesIO(pipeline.stages["save_avatar"].storage.get(job.avatar_key)))
    out.update(timings=sorted(job.timings), attempts=job.attempt, billable=job.billable,
               metadata={k: v for k, v in saved.text.items() if k.startswith("avatar:stamp")})
    print(json.dumps(out))
'''


def _copy_with(tmp: Path, files: dict[str, str]) -> Path:
    """The service's source as it is, plus `files` (path -> text)."""
    tree = tmp / "tree"
    for name in ("avatar", "deployments", "service", "training"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("graph.py", "serve_config.yaml"):
        shutil.copy(ROOT / name, tree / name)
    for name, text in files.items():
        (tree / name).write_text(textwrap.dedent(text))
    return tree


def _run(tree: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree), "AVATAR_DATA_DIR": str(tree.parent / "data")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=240)


def test_a_stage_added_as_two_modules_and_its_yaml_entry_runs_in_the_flow(tmp_path):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["deployments"].append(STAMP_YAML)
    tree = _copy_with(tmp_path, {"avatar/stages/stamp.py": STAMP, "deployments/stamp.py": STAMP_DEPLOYMENT,
                                 "serve_config.yaml": yaml.safe_dump(config)})
    result = _run(tree, PROBE, str(tmp_path / "store"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    assert out["stages"] == [*[s.value for s in Stage][:5], "stamp", *[s.value for s in Stage][5:]]
    assert out["render"] == ["style_apply", "bg_generate", "detail_enhance", "stamp"]   # order=40: after enhance
    assert out["deployment"] == "Stamp" and "Stamp" in out["bound"]
    assert "Stamp.user_config.lable" in out["typo"]
    # it ran in every attempt, after the render stages before it and before the gate, with its config from the YAML
    assert out["metadata"] == {"avatar:stamp": "from the config",
                               "avatar:stamp_after": "load_photo,face_detect,style_apply,bg_generate,detail_enhance"}
    assert "stamp" in out["timings"] and out["billable"] and out["attempts"] == 1


@pytest.mark.parametrize("module, error", [
    ("", "must define STAGE = StageDefinition(name='extra'"),
    ("from avatar.stages import Role, StageConfig, StageDefinition\n"
     "STAGE = StageDefinition('extra', Role.RENDER, StageConfig, lambda cfg: None, order=20)\n",
     "render stages need distinct orders"),
    ("from avatar.stages import Role, StageConfig, StageDefinition\n"
     "STAGE = StageDefinition('extra', Role.GATE, StageConfig, lambda cfg: None)\n",
     "exactly one GATE stage"),
])
def test_a_malformed_stage_module_stops_the_import_naming_the_problem(tmp_path, module, error):
    tree = _copy_with(tmp_path, {"avatar/stages/extra.py": module})
    result = _run(tree, "import avatar.flow.names")
    assert result.returncode != 0 and "ImportError" in result.stderr and error in result.stderr, result.stderr[-2000:]
