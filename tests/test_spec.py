"""One request spec: every entry point builds its job from `AvatarSpec`, and the job store keeps its JSON."""

from __future__ import annotations

import json

from avatar.contracts import BatchRequest, GenerateRequest
from avatar.engines.template import OutputTemplate
from avatar.spec import AvatarSpec


def _request(**fields) -> GenerateRequest:
    return GenerateRequest(input_id="in_" + "x" * 22, **fields)


def test_the_spec_resolves_the_request_defaults():
    spec = _request(platform="linkedin", resolution="high", border_color="#f00", external_id="e7").spec()
    assert spec.style == GenerateRequest(input_id="in_" + "x" * 22, platform="linkedin").resolved_style
    assert spec.size == _request(platform="linkedin", resolution="high").size
    assert spec.template == OutputTemplate("square", (255, 0, 0), 8, False)
    assert spec.external_id == "e7" and spec.match_lighting is False


def test_stored_params_read_back_into_the_same_job():
    spec = _request(style="anime_character", palette="cool_blue", shape="circle", border_color="#123456",
                    border_width=12, style_intensity=0.4).spec(match_lighting=True)
    stored = json.loads(json.dumps({**spec.params(), "billing": {"price": 3}}))   # what the job store keeps
    job = AvatarSpec.model_validate(stored).job(request_id="req_1", account="acct")
    assert (job.request_id, job.account, job.style, job.palette, job.intensity, job.match_lighting) == \
        ("req_1", "acct", "anime_character", "cool_blue", 0.4, True)
    assert job.template == OutputTemplate("circle", (0x12, 0x34, 0x56), 12, False)
    assert job.size == spec.size


def test_params_stored_before_the_spec_still_read():
    """Jobs accepted by an older version: the hand-written dict, template as `dataclasses.asdict`."""
    old = {"style": "corporate_headshot", "platform": "generic", "size": 800, "intensity": 0.5, "palette": None,
           "background": "transparent", "template": {"shape": "rounded", "border_color": [1, 2, 3],
                                                     "border_width": 4, "transparent": True},
           "match_lighting": False, "billing": {"price": 1, "external_id": "e1"}}
    job = AvatarSpec.model_validate(old).job(request_id="req_2", account="a")
    assert job.template == OutputTemplate("rounded", (1, 2, 3), 4, True)
    assert (job.style, job.size, job.intensity, job.background, job.account, job.request_id) == \
        ("corporate_headshot", 800, 0.5, "transparent", "a", "req_2")


def test_a_batch_spec_is_its_shared_look():
    batch = BatchRequest(items=[{"external_id": "p1", "input_id": "in_" + "x" * 22}], style="editorial_portrait",
                         shape="circle", match_lighting=True)
    spec = batch.spec()
    assert spec.style == "editorial_portrait" and spec.template.shape == "circle"
    assert spec.match_lighting and spec.external_id is None
