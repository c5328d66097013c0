"""Credits, rate limits, usage export and feedback over HTTP, on both database backends: the real FastAPI app over
ingress replicas whose stages are stand-ins (no cluster), so the tests see exactly what the account is charged and
whether any work was started. Two `Ingress` objects over one database stand for two replicas."""

from __future__ import annotations

import asyncio
import base64
import csv
import inspect
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from avatar.errors import NoFaceDetected
from avatar.flow.names import Stage
from avatar.store.accounts import open_account_store
from avatar.store.credits import Ledger
from avatar.store.database import open_database
from avatar.store.usage import read_usage
from avatar.tokens import new_token_id
from service.app import app
from service.dependencies import get_ingress
from service.ingress import Ingress

PLANS = {"standard": {"style_credits": {"anime_character": 2}, "avatar_credits": 1, "custom_style_credits": 3,
                      "requests_per_minute": 6000, "burst": 100},
         "team": {"seat_credits": 5, "seat_days": 30, "requests_per_minute": 6000, "burst": 100},
         "tiny": {"requests_per_minute": 0.6, "burst": 3}}


class Pipeline:
    """Stand-in stages: every stage passes the job on; SaveAvatar delivers it, billable when `billable` is set;
    `fail_with` makes FaceDetect refuse the photo. `calls` counts stage calls (work started)."""

    def __init__(self) -> None:
        self.billable, self.fail_with, self.calls = True, None, 0

    def handle(self, stage: Stage):
        pipeline = self

        async def run(*args):
            pipeline.calls += 1
            job = args[0]
            if stage is Stage.FACE_DETECT and pipeline.fail_with is not None:
                raise pipeline.fail_with
            if stage is Stage.SAVE_AVATAR:
                job.avatar_key, job.thumbnail_key = f"outputs/{job.request_id}.png", f"outputs/{job.request_id}_t.png"
                job.billable = pipeline.billable
            return job

        class Method:
            def remote(self, *args):
                async def resolved():
                    return await run(*[await a if inspect.isawaitable(a) else a for a in args])
                return asyncio.ensure_future(resolved())

        class Handle:
            run = check = Method()

            def options(self, **_):
                return self
        return Handle()


@pytest.fixture()
def env(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("AVATAR_DATABASE_URL", database_url)
    monkeypatch.setenv("AVATAR_ACCOUNT_PEPPER", "one pepper")
    monkeypatch.setenv("AVATAR_SIGNING_SECRET", "one signing key")
    monkeypatch.setenv("AVATAR_OPERATOR_KEY", "operator-key")
    store = open_account_store(database_url)
    yield {"store": store, "ledger": Ledger(open_database(database_url)), "url": database_url}
    app.dependency_overrides.clear()


def replica(accounts: dict | None = None, **config) -> tuple[TestClient, Ingress, Pipeline]:
    pipeline = Pipeline()
    ingress = Ingress(**{s.value: pipeline.handle(s) for s in Stage if s is not Stage.QUALITY_GATE})
    ingress.reconfigure({"usage_flush_interval_s": 0, "accounts": accounts or {"credits": True, "plans": PLANS},
                         **config})
    return TestClient(app, raise_server_exceptions=False), ingress, pipeline


def serve(ingress: Ingress) -> None:
    """Route the app's requests to `ingress` (which replica answers)."""
    app.dependency_overrides[get_ingress] = lambda: ingress


def _photo() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


PHOTO = _photo()


def gen(client: TestClient, key: str | None, **fields):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/avatar/generate", json={"image": PHOTO, **fields}, headers=headers)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ------------------------------------------------------------------------------------------ credits
def test_billable_avatars_are_charged_the_others_are_free(env):
    account, key = env["store"].create_account("Acme")
    env["ledger"].grant(account, 10)
    client, ingress, pipeline = replica()
    serve(ingress)
    ok = gen(client, key, style="anime_character")
    assert ok.status_code == 200
    assert (ok.headers["X-Credits-Charged"], ok.headers["X-Credits-Remaining"]) == ("2", "8")
    assert gen(client, key, style="corporate_headshot").headers["X-Credits-Charged"] == "1"
    pipeline.billable = False                                          # delivered, but failed the gate: unbilled
    unbilled = gen(client, key, style="anime_character")
    assert unbilled.status_code == 200 and not unbilled.json()["billable"]
    assert (unbilled.headers["X-Credits-Charged"], unbilled.headers["X-Credits-Remaining"]) == ("0", "7")
    pipeline.fail_with = NoFaceDetected("no face in the photo", field="image")
    refused = gen(client, key, style="anime_character")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "no_face_detected"
    assert (refused.headers["X-Credits-Charged"], refused.headers["X-Credits-Remaining"]) == ("0", "7")
    assert env["ledger"].balance(account) == 7


def test_too_few_credits_is_a_402_before_any_work(env):
    account, key = env["store"].create_account("Acme")
    env["ledger"].grant(account, 1)
    client, ingress, pipeline = replica()
    serve(ingress)
    response = gen(client, key, style="anime_character")
    body = response.json()
    assert response.status_code == 402 and body["error"]["code"] == "insufficient_credits"
    assert body["credits_required"] == 2 and body["credits_remaining"] == 1
    assert (response.headers["X-Credits-Charged"], response.headers["X-Credits-Remaining"]) == ("0", "1")
    assert pipeline.calls == 0                                         # no stage was started
    logged = read_usage(ingress.usage_uri, account=account).to_pylist()
    assert [(r["outcome"], r["credits"], r["billable"]) for r in logged] == [("insufficient_credits", 0, False)]
    assert gen(client, key, style="corporate_headshot").status_code == 200   # a 1-credit style still fits


def test_custom_styles_cost_more(env):
    account, key = env["store"].create_account("Acme")
    token = new_token_id()
    env["store"].register_style(account, token, {"token_id": token, "base_style": "corporate_headshot"})
    env["ledger"].grant(account, 10)
    client, ingress, _ = replica()
    serve(ingress)
    assert gen(client, key, style=token).headers["X-Credits-Charged"] == "3"


def test_a_seat_makes_regenerating_an_employee_free(env):
    account, key = env["store"].create_account("Acme HR", plan="team")
    env["ledger"].grant(account, 20)
    client, ingress, _ = replica()
    serve(ingress)
    charged = [gen(client, key, external_id=e).headers["X-Credits-Charged"]
               for e in ("emp-1", "emp-1", "emp-2", "emp-1")]
    assert charged == ["5", "0", "5", "0"] and env["ledger"].balance(account) == 10
    assert sorted(s.external_id for s in env["ledger"].seats(account)) == ["emp-1", "emp-2"]
    assert gen(client, key, external_id="x" * 201).json()["error"]["field"] == "external_id"


def test_without_credits_or_a_key_there_are_no_credit_headers(env):
    account, key = env["store"].create_account("Acme")
    client, ingress, _ = replica(accounts={"credits": False})
    serve(ingress)
    keyed = gen(client, key)
    assert keyed.status_code == 200 and "X-Credits-Charged" not in keyed.headers
    assert keyed.headers["X-RateLimit-Limit"] == "20"                  # the default plan's burst
    anonymous = gen(client, None)
    assert anonymous.status_code == 200 and "X-Credits-Charged" not in anonymous.headers
    assert "X-RateLimit-Limit" not in anonymous.headers                # anonymous calls are not limited by default


# ------------------------------------------------------------------------------------------ rate limits
def test_rate_limit_is_shared_by_replicas_and_on_every_answer(env):
    account, key = env["store"].create_account("Small", plan="tiny")
    env["ledger"].grant(account, 100)
    (client, one, _), (_, two, _) = replica(), replica()
    serve(one)
    first = gen(client, key)
    assert first.status_code == 200 and first.headers["X-RateLimit-Limit"] == "3"
    assert first.headers["X-RateLimit-Remaining"] == "2" and int(first.headers["X-RateLimit-Reset"]) >= 1
    invalid = client.post("/v1/avatar/generate", json={"image": PHOTO, "palette": "rainbow"}, headers=auth(key))
    assert invalid.status_code == 422 and invalid.headers["X-RateLimit-Remaining"] == "1"   # errors carry them too
    serve(two)                                                         # the other replica: the same bucket
    assert gen(client, key).headers["X-RateLimit-Remaining"] == "0"
    over = gen(client, key)
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
    assert int(over.headers["Retry-After"]) >= 1 and over.headers["X-RateLimit-Remaining"] == "0"
    serve(one)
    assert gen(client, key).status_code == 429
    assert client.get("/v1/account", headers=auth(key)).status_code == 429   # every account route draws on it
    assert env["ledger"].balance(account) == 100 - 2                   # refused calls were never charged


def test_anonymous_calls_are_limited_per_client_when_configured(env):
    client, ingress, _ = replica(accounts={"anonymous": {"requests_per_minute": 0.6, "burst": 2}})
    serve(ingress)
    assert [gen(client, None).status_code for _ in range(3)] == [200, 200, 429]


# ------------------------------------------------------------------------------------------ usage export
def _usage(client, key, **params):
    return client.get("/v1/usage", params=params, headers=auth(key))


def test_usage_export_json_and_csv_holds_only_the_accounts_rows(env):
    mine, my_key = env["store"].create_account("Mine")
    other, other_key = env["store"].create_account("Other")
    for account in (mine, other):
        env["ledger"].grant(account, 50)
    client, ingress, pipeline = replica()
    serve(ingress)
    ids = [gen(client, my_key, style="anime_character", external_id="=HYPERLINK(\"http://x\")").json()["request_id"]]
    pipeline.billable = False
    ids.append(gen(client, my_key).json()["request_id"])
    gen(client, other_key)
    report = _usage(client, my_key)
    body = report.json()
    assert report.status_code == 200 and [r["request_id"] for r in body["rows"]] == ids
    assert body["summary"] == {"requests": 2, "delivered": 2, "billable": 1, "credits": 2}
    assert body["account_id"] == mine and not body["truncated"]
    assert [r["credits"] for r in body["rows"]] == [2, 0]
    exported = _usage(client, my_key, format="csv")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["request_id"] for r in rows] == ids and rows[0]["credits"] == "2"
    assert rows[0]["external_id"].startswith("'=")                     # no formula reaches a spreadsheet
    assert [r["request_id"] for r in _usage(client, other_key).json()["rows"]] != ids
    assert _usage(client, my_key, limit=1).json()["truncated"] is True


@pytest.mark.parametrize("params,field", [
    ({"from": "yesterday"}, "from"), ({"to": "2026-13-45"}, "to"), ({"from": "2026-03-02", "to": "2026-03-01"}, "from"),
    ({"from": "2020-01-01", "to": "2026-01-01"}, "from"), ({"format": "xml"}, "format"), ({"limit": "0"}, "limit"),
    ({"limit": str(10**9)}, "limit"), ({"limit": "many"}, "limit"), ({"from": "2" * 500}, "from"),
    ({"from": "1200-01-01"}, "from")])
def test_usage_export_refuses_hostile_parameters(env, params, field):
    _, key = env["store"].create_account("Acme")
    client, ingress, _ = replica()
    serve(ingress)
    response = _usage(client, key, **params)
    assert response.status_code == 422 and response.json()["error"]["field"] == field


@pytest.mark.parametrize("start_offset, end_offset", [("+05:30", "-05:00"), ("-09:30", "+14:00"), ("Z", "+00:00")])
def test_usage_export_takes_bounds_in_any_utc_offset(env, start_offset, end_offset):
    """`from`/`to` with an offset name instants (UTC unless an offset is given); the answer names them in UTC."""
    from datetime import datetime, timedelta, timezone
    account, key = env["store"].create_account("Acme")
    env["ledger"].grant(account, 5)
    client, ingress, _ = replica()
    serve(ingress)
    made = gen(client, key).json()["request_id"]
    now = datetime.now(timezone.utc).replace(microsecond=0)

    def at(instant: datetime, offset: str) -> str:
        if offset == "Z":
            return instant.strftime("%Y-%m-%dT%H:%M:%SZ")
        sign, hours, minutes = offset[0], int(offset[1:3]), int(offset[4:6])
        delta = timedelta(hours=hours, minutes=minutes) * (1 if sign == "+" else -1)
        return instant.astimezone(timezone(delta)).isoformat()
    report = _usage(client, key, **{"from": at(now - timedelta(hours=1), start_offset),
                                    "to": at(now + timedelta(hours=1), end_offset)})
    assert report.status_code == 200, report.text
    body = report.json()
    assert [r["request_id"] for r in body["rows"]] == [made]
    assert body["from"] == (now - timedelta(hours=1)).isoformat() and body["to"].endswith("+00:00")
    later = _usage(client, key, **{"from": at(now + timedelta(minutes=30), start_offset),
                                   "to": at(now + timedelta(hours=2), end_offset)})
    assert later.status_code == 200 and later.json()["rows"] == []


def test_usage_export_needs_a_key(env):
    client, ingress, _ = replica()
    serve(ingress)
    assert client.get("/v1/usage").status_code == 401
    assert client.get("/v1/usage", headers={"Authorization": "Bearer avk_nope.nope"}).status_code == 401


# ------------------------------------------------------------------------------------------ feedback
def test_feedback_on_own_avatars_gives_decline_rates(env):
    mine, key = env["store"].create_account("Mine")
    _, other_key = env["store"].create_account("Other")
    env["ledger"].grant(mine, 50)
    client, ingress, pipeline = replica()
    serve(ingress)
    kept = gen(client, key, style="anime_character", platform="slack").json()["request_id"]
    declined = gen(client, key, style="anime_character", platform="discord").json()["request_id"]
    pipeline.fail_with = NoFaceDetected("no face", field="image")
    refused = gen(client, key).json()["request_id"]

    def send(request_id, body, who=key):
        return client.post(f"/v1/avatar/{request_id}/feedback", json=body, headers=auth(who))
    ok = send(kept, {"verdict": "accepted"})
    assert ok.status_code == 200 and ok.json()["style"] == "anime_character" and ok.json()["platform"] == "slack"
    assert send(declined, {"verdict": "declined", "reason": "does not look like me"}).status_code == 200
    for request_id, who in ((kept, other_key), (refused, key), ("req_" + "0" * 20, key)):
        answer = send(request_id, {"verdict": "declined"}, who)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "request_not_found"
    assert client.get("/v1/stats").status_code == 401   # operator only
    stats = client.get("/v1/stats", headers=auth("operator-key")).json()["feedback"]
    assert stats["by_style"]["anime_character"] == {"accepted": 1, "declined": 1, "decline_rate": 0.5}
    assert stats["by_platform"]["discord"]["decline_rate"] == 1.0
    logged = read_usage(ingress.usage_uri, account=mine, outcome="feedback").to_pylist()
    assert sorted((r["request_id"], r["feedback"]) for r in logged) == sorted(
        [(kept, "accepted"), (declined, "declined")])
    assert [r["request_id"] for r in _usage(client, key).json()["rows"]] == [kept, declined, refused]


@pytest.mark.parametrize("body,status,field", [
    ({"verdict": "maybe"}, 422, "verdict"), ({"verdict": 1}, 422, "verdict"), ({}, 422, "verdict"),
    ({"verdict": "declined", "reason": "x" * 501}, 422, "reason"), ({"verdict": "declined", "reason": 5}, 422, "reason"),
    ({"verdict": "accepted", "extra": True}, 422, "extra"), (["accepted"], 400, None),
    ({"verdict": "declined", "reason": "y" * 20000}, 413, None)])
def test_feedback_refuses_malformed_bodies(env, body, status, field):
    account, key = env["store"].create_account("Acme")
    env["ledger"].grant(account, 5)
    client, ingress, _ = replica()
    serve(ingress)
    request_id = gen(client, key).json()["request_id"]
    response = client.post(f"/v1/avatar/{request_id}/feedback", json=body, headers=auth(key))
    assert response.status_code == status and response.json()["error"]["field"] == field


def test_feedback_refuses_malformed_ids_and_missing_keys(env):
    _, key = env["store"].create_account("Acme")
    client, ingress, _ = replica()
    serve(ingress)
    for bad in ("nope", "req_" + "a" * 100, "req_%20x", "..%2F..%2Fetc"):
        response = client.post(f"/v1/avatar/{bad}/feedback", json={"verdict": "accepted"}, headers=auth(key))
        assert response.status_code == 404, bad
    raw = client.post("/v1/avatar/req_1/feedback", content=b"{not json", headers={**auth(key),
                                                                                "content-type": "application/json"})
    assert raw.status_code in (400, 422) and raw.json()["error"]["code"]
    assert client.post("/v1/avatar/req_1/feedback", json={"verdict": "accepted"}).status_code == 401


def test_account_view_shows_plan_balance_and_prices(env):
    account, key = env["store"].create_account("Acme HR", plan="team")
    env["ledger"].grant(account, 42)
    client, ingress, _ = replica()
    serve(ingress)
    view = client.get("/v1/account", headers=auth(key)).json()
    assert (view["plan"], view["balance"], view["seat_credits"], view["credits_enabled"]) == ("team", 42, 5, True)
    assert view["prices"]["custom"] == 2 and view["active_seats"] == 0
