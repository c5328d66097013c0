"""The retry loop's data: what one attempt renders, what the gate decided about it, and what is finally delivered.

These travel instead of images: the orchestrator only ever holds a `Verdict` (a few hundred bytes); the rendered job
stays in the stage that produced it until SaveAvatar takes the chosen one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avatar.gate import GateResult, RetryPlan
    from avatar.job import AvatarJob


@dataclass(frozen=True)
class Attempt:
    """The parameters one rendering attempt uses (1 = the request as sent; later ones come from a RetryPlan)."""

    number: int
    intensity: float
    background: str | None = None
    palette: str | None = None
    matte_level: int = 0            # matting strictness (avatar.vision.mask_checks.STRICTNESS)

    @classmethod
    def first(cls, job: "AvatarJob") -> "Attempt":
        return cls(1, job.intensity, job.background, job.palette, job.matte_level)

    def after(self, plan: "RetryPlan", platform: str, style: str, token: dict | None) -> "Attempt":
        """The next attempt: the plan's intensity, a calm studio background when safety failed, a stricter matte
        when old background showed (a transparent background stays transparent)."""
        background, palette = self.background, self.palette
        level = self.matte_level + 1 if getattr(plan, "stricter_mask", False) else self.matte_level
        if plan.safer_background and background != "transparent":
            from avatar.engines.cpu_background import safer_background
            from avatar.types import StyleSpec
            calm = safer_background(StyleSpec(style, plan.intensity, palette, background, token, platform))
            background, palette = calm.background, calm.palette
        return Attempt(plan.attempt, plan.intensity, background, palette, level)


@dataclass
class Verdict:
    """The gate's decision on one attempt, with that attempt's stage times."""

    attempt: Attempt
    gate: "GateResult"
    retry: "RetryPlan | None"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.gate.passed)

    def summary(self) -> dict[str, Any]:
        gate = self.gate
        return {"attempt": self.attempt.number, "style_intensity": round(self.attempt.intensity, 4),
                "background": self.attempt.background, "passed": bool(gate.passed), "checks": dict(gate.checks),
                "likeness": gate.likeness, "nsfw": gate.nsfw}


@dataclass
class Outcome:
    """What SaveAvatar delivers: the chosen attempt's verdict and every attempt's summary and times."""

    chosen: Verdict
    verdicts: list[Verdict]
    per_attempt: tuple[str, ...]    # the stages every attempt ran (`avatar.flow.names.RENDER_STAGES`)

    def apply(self, job: "AvatarJob") -> None:
        """Gate result, attempts, billing and warnings onto the delivered job: billable only when every check
        passed; warnings name every unmet check."""
        gate = self.chosen.gate
        job.gate, job.likeness_score = gate, float(gate.likeness)
        job.attempt, job.history = len(self.verdicts), [v.summary() for v in self.verdicts]
        job.timings = total_timings(self.verdicts, job.timings, self.per_attempt)
        job.billable = bool(gate.passed)
        for w in gate.warnings:
            job.warn(w.code, w.message)
        if not job.billable:
            job.warn("quality_gate_failed", f"no attempt passed every check after {len(self.verdicts)} attempts; "
                                            "the best output is returned and not billed")


def total_timings(verdicts: list[Verdict], current: dict[str, float], per_attempt: tuple[str, ...]
                  ) -> dict[str, float]:
    """Stage times of the whole request: the shared stages once, the `per_attempt` stages summed over attempts."""
    total = {k: v for k, v in current.items() if k not in per_attempt}
    for verdict in verdicts:
        for stage in per_attempt:
            if stage in verdict.timings:
                total[stage] = round(total.get(stage, 0.0) + verdict.timings[stage], 2)
    return total
