"""Serve's processes skip Ray Serve's optional pandas import (66 MB each), and nothing else loses pandas."""

from __future__ import annotations

import subprocess
import sys

import yaml

from service.config import CONFIG_PATH
from service.serve_imports import HOOK

PROBE = """
import sys
{setup}
import ray.serve._private.utils as serve_utils
print(serve_utils.pd is None, "pandas" in sys.modules, "pyarrow" in sys.modules)
import pandas
print(pandas.DataFrame({{"a": [1]}}).shape)
"""


def _probe(setup: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.split("\n")


def test_serve_loads_without_pandas_and_later_imports_still_get_it() -> None:
    hooked = _probe("from service.serve_imports import skip_pandas_in_serve; skip_pandas_in_serve()")
    assert hooked[0] == "True False False"      # Serve's DataFrame encoder off, neither pandas nor pyarrow loaded
    assert hooked[1] == "(1, 1)"                # a later import (training, Ray Data) loads pandas as usual
    plain = _probe("")
    assert plain[0] == "False True True"        # what the hook saves: Serve loads both by itself


def test_the_hook_runs_in_every_replica_of_the_shipped_config_and_of_the_embedded_ray(monkeypatch) -> None:
    config = yaml.safe_load(CONFIG_PATH.read_text())
    (app,) = config["applications"]
    assert app["runtime_env"]["worker_process_setup_hook"] == HOOK
    import ray

    from service import launcher
    seen = {}
    for key in launcher.ray_environment():   # init_local_ray sets these; the teardown restores them
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    launcher.init_local_ray(num_cpus=1)
    assert seen["runtime_env"]["worker_process_setup_hook"] == HOOK
