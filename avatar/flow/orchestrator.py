"""The generation flow, written once for the Serve ingress and the in-process pipeline.

`call(stage, *args)` starts one stage and returns an awaitable result at once; a result can be passed straight into
the next call without being awaited, so images go stage to stage (Serve resolves a `DeploymentResponse` argument in
the receiving replica). The orchestrator awaits only the gate's small `Verdict` per attempt and SaveAvatar's final
job: load -> detect -> [style -> background -> enhance -> gate] with retries at lower intensity -> save.
"""

from __future__ import annotations

from typing import Any, Callable

from avatar.flow.attempts import Attempt, Outcome, Verdict
from avatar.flow.names import Stage
from avatar.job import AvatarJob, PhotoInput

StageCall = Callable[..., Any]   # (stage, *args) -> an awaitable result, itself accepted as an argument


async def generate(job: AvatarJob, source: PhotoInput, call: StageCall, gate: bool = True) -> AvatarJob:
    """Run the whole flow. The quality gate stage decides pass/fail and plans retries from its own configuration;
    with `gate=False` (no gate deployed) every output is delivered as is."""
    detected = call(Stage.FACE_DETECT, call(Stage.LOAD_PHOTO, job, source))
    attempt = Attempt.first(job)
    tried: list[tuple[Any, Verdict]] = []
    while True:
        rendered = call(Stage.DETAIL_ENHANCE, call(Stage.BG_GENERATE, call(Stage.STYLE_APPLY, detected, attempt)))
        if not gate:
            return await call(Stage.SAVE_AVATAR, rendered, None)
        verdict: Verdict = await call(Stage.QUALITY_GATE, rendered)
        tried.append((rendered, verdict))
        if verdict.passed or verdict.retry is None:
            break
        attempt = attempt.after(verdict.retry, job.platform, job.style, job.token)
    chosen = tried[_best([v for _, v in tried])]
    return await call(Stage.SAVE_AVATAR, chosen[0], Outcome(chosen[1], [v for _, v in tried]))


async def check(job: AvatarJob, source: PhotoInput, call: StageCall) -> dict:
    """The pre-flight: load the photo and report what generate would see; nothing is generated."""
    loaded = call(Stage.LOAD_PHOTO, job, source)
    return await call(Stage.FACE_DETECT, loaded, method="check")


def _best(verdicts: list[Verdict]) -> int:
    from avatar.gate import pick_best
    return pick_best([v.gate for v in verdicts])
