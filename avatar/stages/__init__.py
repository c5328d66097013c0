"""The pipeline's stages: each stage is one module of this package, and `DEFINITIONS` is the one list the rest of the
service derives its stages from.

A stage module defines its configuration model (a deployment's `user_config`), its stage class (plain objects,
`run(job) -> job`, no Ray), a builder from config to loaded stage, and `STAGE = StageDefinition(...)`: its name (equal
to the module's name) and its place in the flow (a role, and an order among the stages of that role). The `Stage`
names, the flow the orchestrator runs (`avatar.flow.names`), the config table (`avatar.flow.assembly`) and the Serve
graph (`graph.py`, which binds `deployments/<name>.py`) all read this list, so adding a stage is its module, its
deployment module and its test (docs/stages.md). Modules are found with `pkgutil` when the package is imported, as
the style catalogue's are.

Also here, for every stage module: the config base models, `timed` (stage timings) and `close_stage`.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from avatar.job import AvatarJob


class Role(Enum):
    """What the orchestrator calls a stage for; the flow is load -> detect -> [render... -> gate] -> save."""

    LOAD = 1     # run(job, source) -> job: the photo decoded; keep(job) -> job: an accepted photo cached
    DETECT = 2   # run(job) -> job: the analysed job every attempt starts from; check(job) -> dict: the pre-flight
    RENDER = 3   # one attempt's chain, by `order`: the first stage gets run(job, attempt) and renders a copy of the
    #              analysed job with the attempt's parameters; each later one run(job) -> job on the previous result
    GATE = 4     # run(job) -> Verdict: pass/fail and the retry plan of one attempt
    SAVE = 5     # run(job, outcome | None) -> job: the chosen attempt stored, its images dropped


@dataclass(frozen=True)
class StageDefinition:
    """Everything the service knows about one stage."""

    name: str                       # equal to the module's name: `Stage` member, timings key, configs' key
    role: Role                      # its place in the flow
    config: type["StageConfig"]     # its `user_config` model (unknown keys forbidden)
    build: Callable[[Any], Any]     # config -> the loaded stage object
    order: int = 0                  # its place among the stages of its role (the render chain runs in this order)


# ---------------------------------------------------------------- configuration models shared by stage modules
class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSources(StageConfig):
    """Per-component model overrides (a path, a URL or hf://repo/file); empty = the pinned catalogue files."""

    models: dict[str, str] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _known_components(cls, models: dict[str, str]) -> dict[str, str]:
        from avatar.store.models import CATALOGUE
        known = {f.component for f in CATALOGUE}
        unknown = sorted(set(models) - known)
        if unknown:
            raise ValueError(f"unknown model component(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return models


class EngineChoice(StageConfig):
    """An engine by name (`avatar.engines.registry`) and its options, which the engine itself validates."""

    name: str = "cpu"
    options: dict[str, Any] = Field(default_factory=dict)


class BatchConfig(StageConfig):
    """`@serve.batch` sizing for engines that render batches (diffusion); changing only this reloads no model."""

    max_batch_size: int = Field(4, ge=1)
    wait_timeout_s: float = Field(0.02, ge=0)


# ---------------------------------------------------------------- helpers of stage objects
@contextmanager
def timed(job: AvatarJob | list[AvatarJob], name: str) -> Iterator[None]:
    """Adds the block's time to `job.timings[name]`; for a batch, every job gets the whole batch's time, which is
    how long each request waited for its result."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = (time.perf_counter() - start) * 1000
        for one in job if isinstance(job, list) else [job]:
            one.timings[name] = round(one.timings.get(name, 0.0) + elapsed, 2)


def engine_used(engine, job: AvatarJob):
    """The engine that rendered `job`: a routed engine's pick for it, else the engine itself (for metadata)."""
    pick = getattr(engine, "engine_for", None)
    return pick(job.spec()) if callable(pick) else engine


def close_stage(stage: object) -> None:
    """Release a stage's model runtimes (MediaPipe objects must be closed before interpreter exit): a stage's own
    `close()` when it has one, else the `close()` of the components it holds under the usual names."""
    own = getattr(stage, "close", None)
    if callable(own):
        own()
        return
    for attr in ("analyzer", "segmenter", "learned", "identity", "engine", "enhancer", "gate"):
        close = getattr(getattr(stage, attr, None), "close", None)
        if callable(close):
            close()


# ---------------------------------------------------------------- the list
DEFINITIONS: list[StageDefinition] = []


def _check(definitions: list[StageDefinition]) -> None:
    """The flow needs exactly one stage of each role but RENDER, at least one of that, and a render order without
    ties (ImportError naming the problem: the service cannot start without a whole flow)."""
    for role in Role:
        named = [d.name for d in definitions if d.role is role]
        if role is Role.RENDER:
            orders = [d.order for d in definitions if d.role is role]
            if not named:
                raise ImportError("the flow needs at least one RENDER stage")
            if len(set(orders)) != len(orders):
                raise ImportError(f"render stages need distinct orders; found {dict(zip(named, orders))}")
        elif len(named) != 1:
            raise ImportError(f"the flow needs exactly one {role.name} stage; found {named}")


def _discover() -> None:
    """Collect the `STAGE` of every public module of this package (module name == stage name), in flow order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        definition = getattr(importlib.import_module(f"{__name__}.{info.name}"), "STAGE", None)
        if not isinstance(definition, StageDefinition) or definition.name != info.name:
            raise ImportError(f"{__name__}.{info.name} must define STAGE = StageDefinition(name={info.name!r}, ...)")
        found.append(definition)
    _check(found)
    DEFINITIONS.extend(sorted(found, key=lambda d: (d.role.value, d.order)))


_discover()   # last: stage modules import the types above from this partly initialised package
