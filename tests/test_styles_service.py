"""Custom styles end to end through a real local Ray Serve app over HTTP: API keys, training a token through
`POST /v1/styles`, following it, generating with it (through model multiplexing), account isolation and deletion.

One token is trained once for the module (2 short epochs on 1 worker); tests run in file order and the deletion test
comes last.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from test_service import _b64  # noqa: E402 - tests/ is on sys.path under pytest

TRAINING = {"epochs": 2, "steps_per_epoch": 8, "num_workers": 1, "cpus_per_worker": 0.5, "max_failures": 0}


# ---------------------------------------------------------------- auth helpers (no cluster)
def test_bearer_key_parsing():
    from avatar.errors import Unauthorized
    from service.auth import bearer_key
    assert bearer_key({}) is None
    assert bearer_key({"authorization": "Bearer avk_1.abc"}) == "avk_1.abc"
    assert bearer_key({"authorization": "bearer  avk_1.abc "}) == "avk_1.abc"
    for bad in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "avk_1.abc"):
        with pytest.raises(Unauthorized) as info:
            bearer_key({"authorization": bad})
        assert "avk_1" not in info.value.message   # the credential is never echoed


def test_generate_policy_built_in_open_custom_owned(tmp_path, monkeypatch):
    from avatar.errors import NotFound, Unauthorized
    from avatar.job import AvatarJob
    from avatar.store.accounts import open_account_store
    from service.auth import Authenticator
    from service.dependencies import caller_account
    from service.ingress import Ingress

    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path))
    store = open_account_store("sqlite://:memory:")
    a, key_a = store.create_account("a")
    b, key_b = store.create_account("b")
    store.register_style(a, "sty_aaaaaaaaaaaa", {"token_id": "sty_aaaaaaaaaaaa"})
    ingress = Ingress()
    ingress.auth = Authenticator("sqlite://:memory:", store=store)
    hdr = lambda key: {"authorization": f"Bearer {key}"}
    job = lambda style: AvatarJob(request_id="r", style=style, platform="generic", size=800, intensity=0.5)
    run = asyncio.run

    def account(headers, require):
        ingress.reconfigure({"require_api_key": require})
        request = SimpleNamespace(headers=headers, state=SimpleNamespace(), client=None)   # what the route reads
        return run(caller_account(request, ingress))

    assert account({}, False) is None
    assert account(hdr(key_a), True) == a
    with pytest.raises(Unauthorized):
        account({}, True)
    with pytest.raises(Unauthorized):
        account(hdr(key_a + "x"), False)
    built_in = job("corporate_headshot")
    run(ingress.auth.authorize_style(None, built_in))
    assert built_in.account is None
    custom = job("sty_aaaaaaaaaaaa")
    run(ingress.auth.authorize_style(a, custom))
    assert custom.account == a
    with pytest.raises(Unauthorized):
        run(ingress.auth.authorize_style(None, job("sty_aaaaaaaaaaaa")))
    for account_id, style in ((b, "sty_aaaaaaaaaaaa"), (a, "sty_bbbbbbbbbbbb")):
        with pytest.raises(NotFound) as info:
            run(ingress.auth.authorize_style(account_id, job(style)))
        assert info.value.code == "style_not_found"


def test_cli_creates_an_account_and_lists_its_styles(tmp_path, monkeypatch, capsys):
    import json

    from avatar.store.accounts import open_account_store
    from cli import main
    uri = f"sqlite:///{tmp_path}/accounts.sqlite3"
    monkeypatch.setenv("AVATAR_ACCOUNTS_URI", uri)
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path))
    assert main(["accounts", "create", "Studio"]) == 0
    created = json.loads(capsys.readouterr().out)
    store = open_account_store(uri)
    assert store.authenticate(created["api_key"]) == created["account_id"]
    store.register_style(created["account_id"], "sty_cccccccccccc", {"token_id": "sty_cccccccccccc", "version": 1})
    assert main(["styles", "list", "--account", created["account_id"]]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["token_id"] for s in listed["styles"]] == ["sty_cccccccccccc"] and listed["jobs"] == []
    assert main(["styles", "list", "--account", "acc_other"]) == 0
    assert json.loads(capsys.readouterr().out) == {"styles": [], "jobs": []}


# ---------------------------------------------------------------- the service
@pytest.fixture(scope="module")
def styles_service(serve_app):
    """The session's app with fast training defaults for this module, and two accounts A and B."""
    from avatar.store.accounts import open_account_store
    store = open_account_store()   # the app's database (the session's AVATAR_DATA_DIR)
    a, key_a = store.create_account("Platform A")
    b, key_b = store.create_account("Platform B")
    with serve_app.configured({"AvatarIngress": {"styles": {"training": TRAINING}}}):
        with serve_app.client() as client:
            yield SimpleNamespace(http=client, a=a, b=b, key_a=key_a, key_b=key_b, data=serve_app.data,
                                  auth_a={"authorization": f"Bearer {key_a}"},
                                  auth_b={"authorization": f"Bearer {key_b}"})


def _examples(count: int, seed: int = 0) -> list[tuple[str, tuple[str, bytes, str]]]:
    """`count` teal-orange graded example JPEGs as multipart `images` parts."""
    from training.dataset import make_demo_examples
    out = Path(tempfile.mkdtemp(prefix="style-examples-"))
    paths = make_demo_examples(out, count=count, seed=seed, size=200)
    return [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


@pytest.fixture(scope="module")
def trained(styles_service):
    """Account A's token, trained once through `POST /v1/styles` and followed with `GET /v1/styles/{job}`."""
    svc = styles_service
    resp = svc.http.post("/v1/styles", files=_examples(50), data={"name": "teal orange", "epochs": "2"},
                         headers=svc.auth_a)
    assert resp.status_code == 202, resp.text
    started = resp.json()
    assert started["job_id"].startswith("job_") and started["token_id"].startswith("sty_")
    assert started["state"] in ("queued", "running") and started["examples"] == 50
    deadline, seen = time.time() + 300, []
    while time.time() < deadline:
        status = svc.http.get(f"/v1/styles/{started['job_id']}", headers=svc.auth_a).json()
        seen.append(status)
        if status["state"] not in ("queued", "running"):
            break
        time.sleep(1.0)   # account A's plan allows 2 requests a second
    assert status["state"] == "succeeded", status
    return SimpleNamespace(job_id=started["job_id"], token_id=started["token_id"], status=status, seen=seen)


def _generate(svc, astronaut, style, headers=None):
    return svc.http.post("/v1/avatar/generate", json={"image": _b64(astronaut), "style": style},
                         headers=headers or {})


def _png_text(svc, body) -> dict[str, str]:
    png = svc.http.get(body["avatar_url"])
    assert png.status_code == 200
    return Image.open(io.BytesIO(png.content)).text


@pytest.mark.serve
@pytest.mark.timeout(600)
def test_style_routes_need_a_valid_key(styles_service):
    svc = styles_service
    for headers in ({}, {"authorization": "Bearer avk_0000.wrong"}, {"authorization": f"Basic {svc.key_a}"}):
        for method, path in (("GET", "/v1/styles"), ("POST", "/v1/styles"), ("GET", "/v1/styles/job_00"),
                             ("DELETE", "/v1/styles/sty_aaaaaaaaaaaa")):
            resp = svc.http.request(method, path, headers=headers)
            assert resp.status_code == 401, (method, path, headers, resp.text)
            assert resp.json()["error"]["code"] in ("missing_api_key", "invalid_api_key", "invalid_authorization")
            assert svc.key_a not in resp.text
    # built-in styles stay open: without a key a bad body is judged on its own (422, not 401)
    resp = svc.http.post("/v1/avatar/generate", json={"style": "corporate_headshot"})
    assert resp.status_code == 422


@pytest.mark.serve
@pytest.mark.timeout(600)
def test_bad_uploads_answer_422_naming_the_files(styles_service):
    svc = styles_service
    few = svc.http.post("/v1/styles", files=_examples(49, seed=1), headers=svc.auth_a)
    assert few.status_code == 422, few.text
    assert few.json()["error"]["code"] == "too_few_examples" and few.json()["count"] == 49
    files = _examples(50, seed=2)
    files[7] = ("images", ("notes.jpg", b"these are not pixels", "image/jpeg"))
    bad = svc.http.post("/v1/styles", files=files, headers=svc.auth_a)
    assert bad.status_code == 422, bad.text
    body = bad.json()
    assert [f["file"] for f in body["bad_files"]] == ["notes.jpg"] and body["bad_files"][0]["reason"]
    assert "notes.jpg" in body["error"]["message"]
    outside = svc.http.post("/v1/styles", json={"images_uri": str(svc.data), "name": "x"}, headers=svc.auth_a)
    assert outside.status_code == 422 and outside.json()["error"]["code"] == "images_uri_refused"
    listed = svc.http.get("/v1/styles", headers=svc.auth_a).json()
    assert all(j["state"] != "queued" for j in listed["jobs"])   # nothing was started by refused uploads


@pytest.mark.serve
@pytest.mark.timeout(600)
def test_training_progress_and_listing(styles_service, trained):
    svc, status = styles_service, trained.status
    assert status["token_id"] == trained.token_id and status["ready"] is True and status["name"] == "teal orange"
    assert status["epoch"] == status["epochs"] == 2 and status["loss"] > 0 and status["eta_s"] == 0
    assert status["version"].startswith(f"{trained.token_id}@1-")
    by_token = svc.http.get(f"/v1/styles/{trained.token_id}", headers=svc.auth_a).json()
    assert by_token["job_id"] == trained.job_id and by_token["state"] == "succeeded"
    listed = svc.http.get("/v1/styles", headers=svc.auth_a).json()
    assert [s["token_id"] for s in listed["styles"]] == [trained.token_id]


@pytest.mark.serve
@pytest.mark.timeout(600)
def test_generate_with_the_token(styles_service, trained, astronaut):
    svc = styles_service
    resp = _generate(svc, astronaut, trained.token_id, svc.auth_a)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["style"] == trained.token_id and body["style_version"] == trained.status["version"]
    text = _png_text(svc, body)
    assert text["avatar:style"] == trained.token_id
    assert text["avatar:style_version"] == text["avatar:style_token"] == body["style_version"]
    # a custom style needs the key
    no_key = _generate(svc, astronaut, trained.token_id)
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "missing_api_key"


@pytest.mark.serve
@pytest.mark.timeout(600)
def test_tokens_are_multiplexed_in_style_apply(styles_service, trained, astronaut):
    """The token is loaded once by the StyleApply replica (multiplexed model id `<account>/<token>`), then warm."""
    from ray import serve
    svc = styles_service
    stats = lambda: serve.get_deployment_handle("StyleApply", app_name="avatar").token_stats.remote().result()
    before = stats()["loads"]
    assert before == [f"{svc.a}/{trained.token_id}"]   # loaded by the previous test's request, and only once
    resp = _generate(svc, astronaut, trained.token_id, svc.auth_a)
    assert resp.status_code == 200, resp.text
    assert stats()["loads"] == before                    # warm: served from the replica's multiplexed models


@pytest.mark.serve
@pytest.mark.timeout(600)
def test_other_account_sees_nothing(styles_service, trained, astronaut):
    svc = styles_service
    for ident in (trained.token_id, trained.job_id):
        for method in ("GET", "DELETE"):
            resp = svc.http.request(method, f"/v1/styles/{ident}", headers=svc.auth_b)
            assert resp.status_code == 404, (method, ident, resp.text)
    missing = svc.http.get("/v1/styles/sty_doesnotexist00", headers=svc.auth_b).json()["error"]
    other = svc.http.get(f"/v1/styles/{trained.token_id}", headers=svc.auth_b).json()["error"]
    assert (missing["code"], missing["field"]) == (other["code"], other["field"]) == ("style_not_found", "style")
    listed = svc.http.get("/v1/styles", headers=svc.auth_b).json()
    assert listed == {"styles": [], "jobs": []}
    gen = _generate(svc, astronaut, trained.token_id, svc.auth_b)
    assert gen.status_code == 404 and gen.json()["error"]["code"] == "style_not_found"
    assert svc.http.get(f"/v1/styles/{trained.token_id}", headers=svc.auth_a).json()["ready"] is True


@pytest.mark.serve
@pytest.mark.timeout(600)
def test_delete_then_generate_is_404(styles_service, trained, astronaut):
    svc = styles_service
    resp = svc.http.delete(f"/v1/styles/{trained.token_id}", headers=svc.auth_a)
    assert resp.status_code == 204, resp.text
    assert svc.http.get(f"/v1/styles/{trained.token_id}", headers=svc.auth_a).status_code == 404
    assert svc.http.get(f"/v1/styles/{trained.job_id}", headers=svc.auth_a).status_code == 404
    assert svc.http.get("/v1/styles", headers=svc.auth_a).json() == {"styles": [], "jobs": []}
    assert not list((svc.data / "storage" / "styles" / svc.a / trained.token_id).glob("*"))
    gen = _generate(svc, astronaut, trained.token_id, svc.auth_a)
    assert gen.status_code == 404 and gen.json()["error"]["code"] == "style_not_found"
    assert svc.http.delete(f"/v1/styles/{trained.token_id}", headers=svc.auth_a).status_code == 404
