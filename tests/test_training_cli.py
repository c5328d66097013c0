"""`avatar styles train`: `--engine` picks the trainer, `--recipes` and `--base-style` reach its config, each
trainer's defaults hold when an option is left out. The trainers and the local Ray are replaced: no training runs."""

from __future__ import annotations

import dataclasses
import json

import pytest

import training.train_diffusion_style as diffusion_trainer
import training.train_style as cpu_trainer
from cli import main
from training.runner import TrainResult
from training.trainers import TRAINERS


@pytest.fixture()
def calls(tmp_path, monkeypatch) -> list:
    """Each trainer run as (engine, config); Ray is not started."""
    import service.launcher
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AVATAR_ACCOUNTS_URI", f"sqlite:///{tmp_path}/accounts.sqlite3")
    monkeypatch.delenv("AVATAR_STORAGE_URI", raising=False)
    monkeypatch.setattr(service.launcher, "init_local_ray", lambda **kw: None)
    seen: list = []

    def fake(engine: str):
        def run_training(cfg, examples=None):
            seen.append((engine, cfg))
            return TrainResult(cfg.job_id, cfg.token_id, {}, {"val_loss": 0.1}, 0.5)
        return run_training

    for engine, trainer in list(TRAINERS.items()):
        monkeypatch.setitem(TRAINERS, engine, dataclasses.replace(trainer, run=fake(engine)))
    return seen


def _result(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def test_default_engine_is_cpu(calls, tmp_path, capsys):
    assert main(["styles", "train", "--account", "acc_1", "--images", "ex/", "--workers", "1"]) == 0
    [(engine, cfg)] = calls
    assert engine == "cpu" and type(cfg) is cpu_trainer.TrainConfig
    assert cfg.account_id == "acc_1" and cfg.images == "ex/" and cfg.num_workers == 1
    assert cfg.base_style == "corporate_headshot" and cfg.epochs == 8
    assert cfg.storage_uri == str(tmp_path / "storage")
    assert cfg.accounts_uri == f"sqlite:///{tmp_path}/accounts.sqlite3"
    assert _result(capsys.readouterr().out)["token_id"] == cfg.token_id


def test_cpu_engine_options(calls):
    assert main(["styles", "train", "--engine", "cpu", "--account", "acc_1", "--images", "ex/", "--epochs", "3",
                 "--base-style", "vintage_film", "--cpus-per-worker", "0.5"]) == 0
    [(engine, cfg)] = calls
    assert engine == "cpu" and cfg.epochs == 3 and cfg.base_style == "vintage_film" and cfg.cpus_per_worker == 0.5


def test_diffusion_engine_routes_to_the_diffusion_trainer(calls, capsys):
    assert main(["styles", "train", "--engine", "diffusion", "--account", "acc_1", "--images", "ex/",
                 "--recipes", "my/recipes.yaml", "--base-style", "editorial_portrait", "--epochs", "2"]) == 0
    [(engine, cfg)] = calls
    assert engine == "diffusion" and type(cfg) is diffusion_trainer.DiffusionTrainConfig
    assert cfg.recipes == "my/recipes.yaml" and cfg.base_style == "editorial_portrait" and cfg.epochs == 2
    assert cfg.account_id == "acc_1" and cfg.num_workers == 2
    assert _result(capsys.readouterr().out)["job_id"] == cfg.job_id


def test_diffusion_engine_keeps_its_defaults(calls):
    assert main(["styles", "train", "--engine", "diffusion", "--account", "acc_1", "--images", "ex/"]) == 0
    [(engine, cfg)] = calls
    defaults = diffusion_trainer.DiffusionTrainConfig(account_id="a", images="i", storage_uri="s")
    assert engine == "diffusion"
    assert (cfg.recipes, cfg.base_style, cfg.epochs) == (defaults.recipes, None, defaults.epochs)


def test_recipes_without_the_diffusion_engine_is_refused(calls, capsys):
    assert main(["styles", "train", "--account", "acc_1", "--images", "ex/", "--recipes", "r.yaml"]) == 2
    assert calls == []
    assert json.loads(capsys.readouterr().err)["error"]["field"] == "recipes"


def test_unknown_engine_is_an_argument_error(calls):
    with pytest.raises(SystemExit) as exit_:
        main(["styles", "train", "--engine", "gan", "--account", "acc_1", "--images", "ex/"])
    assert exit_.value.code == 2 and calls == []
