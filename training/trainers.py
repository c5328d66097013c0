"""The style trainers by engine name: the one table the job registry (`training.jobs`) and `avatar styles train`
switch on.

- `cpu`: a colour LUT token (`training.train_style`);
- `diffusion`: a textual-inversion embedding on a diffusion recipe's base model (`training.train_diffusion_style`).

Importing this module imports the trainers, hence torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from avatar.errors import InvalidRequest
from training import train_diffusion_style, train_style
from training.runner import StyleJobConfig, TrainResult


@dataclass(frozen=True)
class Trainer:
    """One kind of style token: its job config, the driver that trains and publishes it, and what a submission checks
    before the job is queued (nothing is written when a check fails)."""

    config: type[StyleJobConfig]
    run: Callable[[Any], TrainResult]
    precheck: Callable[[Any], Any] | None = None   # beyond the examples; raises when the job could not start
    precheck_size: int | None = None               # examples are decoded at this size to validate them (None: the
                                                   # config's image_size)

    @property
    def engine(self) -> str:
        return self.config.engine

    def field_names(self) -> set[str]:
        return {f.name for f in fields(self.config)}


TRAINERS: dict[str, Trainer] = {t.engine: t for t in (
    Trainer(train_style.TrainConfig, train_style.run_training),
    # the diffusion trainer decodes at its own resolution on the workers; on submit only validity matters, and a
    # missing recipe or base model fails the request rather than the job
    Trainer(train_diffusion_style.DiffusionTrainConfig, train_diffusion_style.run_training,
            precheck=train_diffusion_style.resolve_base, precheck_size=16),
)}


def trainer_for(engine: str) -> Trainer:
    """The trainer for `engine`; InvalidRequest (field `engine`) when there is none."""
    try:
        return TRAINERS[engine]
    except KeyError:
        raise InvalidRequest(f"unknown training engine {engine!r}; use {' or '.join(TRAINERS)}", field="engine",
                             code="unknown_engine") from None
