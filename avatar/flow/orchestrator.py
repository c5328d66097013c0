"""The generation flow, written once for the Serve ingress and the in-process pipeline.

`call(stage_name, *args)` runs one stage (a Serve handle call or a direct method call); the flow itself is pure:
load -> detect -> [style -> background -> enhance -> gate] with retries at lower intensity -> save.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from avatar.job import AvatarJob, PhotoInput
from avatar.flow.stages import retry_job

StageCall = Callable[..., Awaitable[AvatarJob]]

RENDER_STAGES = ("style_apply", "bg_generate", "detail_enhance")


async def generate(job: AvatarJob, source: PhotoInput, call: StageCall, gate: bool = True) -> AvatarJob:
    """Run the whole flow. The quality gate stage decides pass/fail and plans retries from its own configuration;
    with `gate=False` (no gate deployed) every output is delivered as is."""
    job = await call("load_photo", job, source)
    job = await call("face_detect", job)
    base, current, attempts = job, job, []
    while True:
        out = current
        for name in RENDER_STAGES:
            out = await call(name, out)
        if not gate:
            out.billable = True
            return await call("save_avatar", out)
        out = await call("quality_gate", out)
        attempts.append(out)
        if out.gate.passed or out.retry is None:
            break
        plan = out.retry
        current = retry_job(base, out, plan.intensity, plan.safer_background)
    best = out if out.gate.passed else _best(attempts)
    best.attempt = len(attempts)
    best.history = [_summary(a) for a in attempts]
    _finalise(best, attempts)
    return await call("save_avatar", best)


def _best(attempts: list[AvatarJob]) -> AvatarJob:
    from avatar.gate import pick_best
    return attempts[pick_best([a.gate for a in attempts])]


def _summary(attempt: AvatarJob) -> dict:
    gate = attempt.gate
    return {"attempt": attempt.attempt, "style_intensity": round(attempt.intensity, 4),
            "background": attempt.background, "passed": bool(gate.passed), "checks": dict(gate.checks),
            "likeness": gate.likeness, "nsfw": gate.nsfw}


def _finalise(best: AvatarJob, attempts: list[AvatarJob]) -> None:
    """Billing and warnings: billable only when every check passed; warnings name every check not met."""
    best.billable = bool(best.gate.passed)
    for w in best.gate.warnings:
        best.warn(w.code, w.message)
    if not best.billable:
        best.warn("quality_gate_failed", f"no attempt passed every check after {len(attempts)} attempts; "
                                         "the best output is returned and not billed")
