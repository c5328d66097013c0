"""The generation flow, written once for the Serve ingress and the in-process pipeline.

`call(stage, *args)` starts one stage and returns an awaitable result at once; a result can be passed straight into
the next call without being awaited, so images go stage to stage (Serve resolves a `DeploymentResponse` argument in
the receiving replica). The orchestrator awaits only the gate's small `Verdict` per attempt and SaveAvatar's final
job: load -> detect -> [render chain -> gate] with retries at lower intensity -> save. Which stage plays each part,
and the render chain's order (today style -> background -> enhance), come from the stage modules (`avatar.stages`).
"""

from __future__ import annotations

from typing import Any, Callable

from avatar.flow.attempts import Attempt, Outcome, Verdict
from avatar.flow.names import FLOW
from avatar.job import AvatarJob, PhotoInput

StageCall = Callable[..., Any]   # (stage, *args) -> an awaitable result, itself accepted as an argument


async def generate(job: AvatarJob, source: PhotoInput, call: StageCall, gate: bool = True) -> AvatarJob:
    """Run the whole flow. The quality gate stage decides pass/fail and plans retries from its own configuration;
    with `gate=False` (no gate deployed) every output is delivered as is."""
    detected = call(FLOW.detect, call(FLOW.load, job, source))
    if source.cache:   # only a photo whose face was accepted is kept (FaceDetect raises for the others)
        detected = call(FLOW.load, detected, method="keep")
    attempt = Attempt.first(job)
    tried: list[tuple[Any, Verdict]] = []
    while True:
        rendered = render(call, detected, attempt)
        if not gate:
            return await call(FLOW.save, rendered, None)
        verdict: Verdict = await call(FLOW.gate, rendered)
        tried.append((rendered, verdict))
        if verdict.passed or verdict.retry is None:
            break
        attempt = attempt.after(verdict.retry, job.platform, job.style, job.token)
    chosen = tried[_best([v for _, v in tried])]
    return await call(FLOW.save, chosen[0], Outcome(chosen[1], [v for _, v in tried], FLOW.per_attempt))


def render(call: StageCall, detected: Any, attempt: Attempt) -> Any:
    """One attempt's render chain, unawaited: the first render stage starts from the analysed job with the attempt's
    parameters, each later one from the previous stage's result."""
    first, *rest = FLOW.render
    rendered = call(first, detected, attempt)
    for stage in rest:
        rendered = call(stage, rendered)
    return rendered


async def check(job: AvatarJob, source: PhotoInput, call: StageCall) -> dict:
    """The pre-flight: load the photo and report what generate would see; nothing is generated."""
    loaded = call(FLOW.load, job, source)
    report = await call(FLOW.detect, loaded, method="check")
    if source.cache and report["accepted"]:   # a photo without an accepted face is never kept
        kept = await call(FLOW.load, loaded, method="keep")
        report.update(kept.input_fields())
    return report


def _best(verdicts: list[Verdict]) -> int:
    from avatar.gate import pick_best
    return pick_best([v.gate for v in verdicts])
