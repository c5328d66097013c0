"""Jobs, batches, webhooks and idempotency through the real HTTP app and the real runner, with every stage run
in-process (the same stage objects the Serve replicas hold): no cluster, so every rule is checked quickly.

The runner is a `JobWorker` driven step by step by the test; killing it is stopping it while items are provably
running (its leases stay in the store until they expire), exactly what a dead replica leaves behind. A test that
needs time to pass (a lease, a TTL, a webhook's backoff) gives the runner a `ManualClock` and moves it: none sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from avatar.clock import ManualClock
from avatar.flow.names import Stage
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(900)


class _Method:
    def __init__(self, pipeline, stage, method):
        self.remote = lambda *args: pipeline._call(stage, *args, method=method)


class StageHandle:
    """Stands in for a DeploymentHandle over an in-process stage."""

    def __init__(self, pipeline, stage):
        self.run, self.check = _Method(pipeline, stage, "run"), _Method(pipeline, stage, "check")

    def options(self, **_):
        return self


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def env(request, tmp_path_factory):
    """The service's environment; the job store, accounts and credits on each backend in turn (the embedded SQLite
    files, then a database on a real PostgreSQL server)."""
    data = tmp_path_factory.mktemp("jobs-data")
    saved = dict(os.environ)
    os.environ.update({"AVATAR_DATA_DIR": str(data), "AVATAR_SIGNING_SECRET": "test-secret",
                       "AVATAR_WEBHOOK_ALLOW_PRIVATE": "true", "AVATAR_WEBHOOK_RETRY_BASE_S": "0.05",
                       "AVATAR_WEBHOOK_RETRY_WINDOW_S": "30"})
    if request.param == "postgres":
        os.environ.update({"AVATAR_DATABASE_URL": request.getfixturevalue("postgres").new_database(),
                           "AVATAR_ACCOUNT_PEPPER": "test-pepper"})
    yield data
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def pipeline(env):
    from avatar.flow.local import LocalPipeline
    storage = str(env / "storage")
    with LocalPipeline(configs={"save_avatar": {"storage_uri": storage},
                                "load_photo": {"storage_uri": storage}}) as p:
        yield p


@pytest.fixture(scope="module")
def api(env, pipeline):
    """The FastAPI app over an ingress whose stages are the in-process ones, and two accounts."""
    from avatar.store.accounts import open_account_store
    from service.app import app
    from service.dependencies import get_ingress
    from service.ingress import Ingress
    ingress = Ingress(**{stage.value: StageHandle(pipeline, stage) for stage in Stage})
    ingress.reconfigure({"usage_flush_interval_s": 0, "batches": {"max_items": 6},   # many calls from one account:
                         "accounts": {"plans": {"standard": {"requests_per_minute": 6000, "burst": 1000}}}})
    store = open_account_store()
    _, key_a = store.create_account("acme")
    _, key_b = store.create_account("globex")
    app.dependency_overrides[get_ingress] = lambda: ingress
    client = TestClient(app, raise_server_exceptions=False)
    client.ingress, client.a, client.b = ingress, {"Authorization": f"Bearer {key_a}"}, \
        {"Authorization": f"Bearer {key_b}"}
    yield client
    app.dependency_overrides.clear()


def worker_for(api, pipeline, clock=None, call_for=None, **config):
    """A runner over the service's job store; with `clock`, its store, leases, sweeps and retries read that clock
    (the HTTP side keeps the real one)."""
    from avatar.store.jobs import SqlJobStore
    from avatar.store.storage import Storage
    from service.config import RunnerConfig
    from service.runner import JobWorker
    ing = api.ingress
    cfg = RunnerConfig(**{"poll_s": 0.05, "renew_every_s": 0.05, "sweep_every_s": 3600, **config})
    store = ing.jobs if clock is None else SqlJobStore(ing.jobs.db, clock=clock)
    return JobWorker(store, Storage(ing.storage.uri), ing.signer, call_for or (lambda job: pipeline._call), cfg,
                     telemetry=ing.telemetry, ledger=ing.billing.ledger, **({"clock": clock} if clock else {}))


def drain(worker, timeout_s=300):
    asyncio.run(worker.drain(timeout_s))


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _b64(image: np.ndarray) -> str:
    return base64.b64encode(_jpeg(image)).decode()


ASYNC = {"Prefer": "respond-async"}


# ---------------------------------------------------------------- asynchronous generate
def test_async_generate_lifecycle_and_signed_webhooks(api, pipeline, astronaut):
    secret = api.get("/v1/webhooks/secret", headers=api.a).json()["secret"]
    with Receiver(secret) as receiver:
        resp = api.post("/v1/avatar/generate", headers={**api.a, **ASYNC},
                        json={"image": _b64(astronaut), "platform": "linkedin", "webhook_url": receiver.url,
                              "webhook_events": ["started", "completed"]})
        assert resp.status_code == 202, resp.text
        job = resp.json()
        assert job["state"] == "queued" and job["kind"] == "generate" and job["output"] is None
        assert resp.headers["location"] == job["status_url"] == f"/v1/jobs/{job['job_id']}"
        assert job["progress"] == {"total": 1, "done": 0, "succeeded": 0, "failed": 0, "canceled": 0,
                                   "running": 0, "queued": 1, "eta_s": None}
        drain(worker_for(api, pipeline))
        done = api.get(job["status_url"], headers=api.a).json()
    assert done["state"] == "succeeded" and done["started_at"] and done["finished_at"] and done["expires_at"]
    sync = api.post("/v1/avatar/generate", json={"image": _b64(astronaut), "platform": "linkedin"}).json()
    assert set(done["output"]) == set(sync)          # exactly the synchronous body
    assert done["output"]["style"] == "corporate_headshot" and done["output"]["billable"]
    feedback = api.post(f"/v1/avatar/{done['output']['request_id']}/feedback", headers=api.a,
                        json={"verdict": "accepted"})
    assert feedback.status_code == 200 and feedback.json()["platform"] == "linkedin", feedback.text
    png = api.get(done["output"]["avatar_url"])
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (800, 800)
    assert receiver.events() == ["job.started", "job.completed"]
    assert all(r["verified"] for r in receiver.received)
    completed = receiver.payloads()[-1]["data"]
    assert completed["job_id"] == job["job_id"] and completed["output"]["avatar_url"] == done["output"]["avatar_url"]
    attempts = [d["attempts"] for d in done["webhook"]["deliveries"]]
    assert [d["event"] for d in done["webhook"]["deliveries"]] == ["started", "completed"]
    assert all(len(a) == 1 and a[0]["status_code"] == 204 for a in attempts)
    assert api.get(job["status_url"], headers=api.b).status_code == 404       # another account's job


def test_a_failed_async_job_carries_the_synchronous_error(api, pipeline):
    from skimage import data
    resp = api.post("/v1/avatar/generate", headers={**api.a, **ASYNC}, json={"image": _b64(data.coffee())})
    drain(worker_for(api, pipeline))
    job = api.get(resp.json()["status_url"], headers=api.a).json()
    assert job["state"] == "failed" and job["output"] is None
    assert job["error"]["error"]["code"] == "no_face_detected" and job["error"]["face_count"] == 0


def test_webhook_retries_with_backoff_until_the_receiver_answers(api, pipeline, astronaut):
    secret = api.get("/v1/webhooks/secret", headers=api.a).json()["secret"]
    clock = ManualClock()
    with Receiver(secret, statuses=[500, 503]) as receiver:
        resp = api.post("/v1/avatar/generate", headers={**api.a, **ASYNC},
                        json={"image": _b64(astronaut), "webhook_url": receiver.url})   # default: completed
        worker = worker_for(api, pipeline, clock=clock)
        asyncio.run(worker.drain(300, retries=False))
        for sent in (1, 2):                              # each retry waits for its backoff on the runner's clock
            assert len(receiver.received) == sent and worker.retry_due > clock()
            asyncio.run(worker.drain(60, retries=False))
            assert len(receiver.received) == sent        # not due yet: nothing is sent early
            clock.advance(worker.retry_due - clock() + 0.001)
            asyncio.run(worker.drain(60, retries=False))
        job = api.get(resp.json()["status_url"], headers=api.a).json()
    [delivery] = job["webhook"]["deliveries"]
    assert delivery["event"] == "completed" and delivery["state"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 204]
    assert delivery["attempts"][0]["error"] == "HTTP 500"
    assert len({r["headers"]["webhook-id"] for r in receiver.received}) == 1       # one message, three attempts
    times = [int(r["headers"]["webhook-timestamp"]) for r in receiver.received]
    assert times == sorted(times)


def test_a_webhook_to_loopback_is_refused_without_the_setting(api, astronaut, monkeypatch):
    monkeypatch.setenv("AVATAR_WEBHOOK_ALLOW_PRIVATE", "false")
    resp = api.post("/v1/avatar/generate", headers={**api.a, **ASYNC},
                    json={"image": _b64(astronaut), "webhook_url": "http://127.0.0.1:9/hook"})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "webhook_url"


# ---------------------------------------------------------------- idempotency
def test_idempotent_generate_replays_without_new_work(api, astronaut):
    import pyarrow.dataset as ds
    body = {"image": _b64(astronaut), "platform": "slack"}
    key = {"Idempotency-Key": "gen-0001"}
    first = api.post("/v1/avatar/generate", headers=key, json=body)
    api.ingress.telemetry.usage.flush()
    rows = ds.dataset(api.ingress.telemetry.usage.root, format="parquet", partitioning="hive").count_rows()
    again = api.post("/v1/avatar/generate", headers=key, json=body)
    api.ingress.telemetry.usage.flush()
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert ds.dataset(api.ingress.telemetry.usage.root, format="parquet", partitioning="hive").count_rows() == rows
    other = api.post("/v1/avatar/generate", headers=key, json={**body, "platform": "teams"})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    fresh = api.post("/v1/avatar/generate", headers={"Idempotency-Key": "gen-0002"}, json=body)
    assert fresh.json()["request_id"] != first.json()["request_id"]


def test_respond_async_is_heard_among_other_preferences_and_headers(api, astronaut):
    """RFC 7240: preferences come in one header or several; `respond-async` anywhere among them makes a job."""
    body = {"image": _b64(astronaut)}
    several = api.post("/v1/avatar/generate", json=body,
                       headers=[*api.a.items(), ("Prefer", "return=minimal"), ("Prefer", "wait=5, respond-async")])
    assert several.status_code == 202 and several.json()["job_id"], several.text
    api.post(f"{several.json()['status_url']}/cancel", headers=api.a)
    other = api.post("/v1/avatar/generate", json=body, headers={**api.a, "Prefer": "return=minimal"})
    assert other.status_code == 200 and "job_id" not in other.json()


def test_idempotent_jobs_and_batches_return_the_original_job(api, astronaut):
    key = {**api.a, **ASYNC, "Idempotency-Key": "job-1"}
    body = {"image": _b64(astronaut)}
    first, again = (api.post("/v1/avatar/generate", headers=key, json=body) for _ in range(2))
    assert first.status_code == again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
    assert api.post("/v1/avatar/generate", headers=key, json={**body, "platform": "github"}).status_code == 422
    # the same key from another account is that account's own key
    assert api.post("/v1/avatar/generate", headers={**key, **api.b}, json=body).json()["job_id"] != \
        first.json()["job_id"]
    batch = {"items": [{"external_id": "e1", "image": _b64(astronaut)}], "platform": "linkedin"}
    bkey = {**api.a, "Idempotency-Key": "batch-1"}
    b1, b2 = (api.post("/v1/batches", headers=bkey, json=batch) for _ in range(2))
    assert b1.json()["job_id"] == b2.json()["job_id"]
    listed = [j["job_id"] for j in api.get("/v1/jobs", headers=api.a, params={"kind": "batch"}).json()["jobs"]]
    assert listed.count(b1.json()["job_id"]) == 1
    for job in (first.json(), b1.json()):
        api.post(f"{job['status_url']}/cancel", headers=api.a)
    bad = api.post("/v1/batches", headers={**api.a, "Idempotency-Key": "has space"}, json=batch)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "idempotency-key"


# ---------------------------------------------------------------- batches
def _truncated(image: np.ndarray) -> str:
    data = _jpeg(image)
    return base64.b64encode(data[: len(data) // 4]).decode()


def test_a_batch_with_good_no_face_and_corrupt_items(api, pipeline, astronaut):
    from skimage import data
    from matplotlib import cbook
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        hopper = np.array(Image.open(fh).convert("RGB"))
    secret = api.get("/v1/webhooks/secret", headers=api.a).json()["secret"]
    items = [{"external_id": "emp-001", "image": _b64(astronaut)},
             {"external_id": "emp-002", "image": _b64(hopper)},
             {"external_id": "emp-003", "image": _b64(data.coffee())},          # no face
             {"external_id": "emp-004", "image": _truncated(astronaut)},        # corrupt file
             {"external_id": "emp-005", "image": "%%% not base64 %%%"}]         # not even base64
    with Receiver(secret) as receiver:
        resp = api.post("/v1/batches", headers=api.a, json={
            "items": items, "style": "corporate_headshot", "platform": "linkedin", "palette": "cool_blue",
            "webhook_url": receiver.url, "webhook_events": ["item_completed", "completed"]})
        assert resp.status_code == 202, resp.text
        drain(worker_for(api, pipeline, max_concurrency=2))
        job = api.get(resp.json()["status_url"], headers=api.a).json()
    assert job["state"] == "succeeded"                          # bad photos never fail the batch
    assert job["progress"]["total"] == 5 and job["progress"]["succeeded"] == 2 and job["progress"]["failed"] == 3
    out = job["output"]
    assert (out["succeeded"], out["failed"], out["billable"]) == (2, 3, 2)
    listed = api.get(f"{job['status_url']}/items", headers=api.a).json()["items"]
    by_id = {i["external_id"]: i for i in listed}
    assert by_id["emp-001"]["state"] == "succeeded" and by_id["emp-001"]["billable"]
    assert by_id["emp-001"]["result"]["likeness_score"] > 0.8 and by_id["emp-001"]["result"]["avatar_url"]
    assert by_id["emp-003"]["error"]["error"]["code"] == "no_face_detected" and not by_id["emp-003"]["billable"]
    assert by_id["emp-004"]["error"]["error"]["code"] in ("invalid_image", "corrupt_image", "unreadable_image")
    assert by_id["emp-005"]["error"]["error"]["code"] == "invalid_base64"
    with zipfile.ZipFile(io.BytesIO(api.get(out["zip_url"]).content)) as archive:
        assert sorted(archive.namelist()) == ["emp-001.png", "emp-002.png"]
        assert Image.open(io.BytesIO(archive.read("emp-002.png"))).size == (800, 800)
    sheet = Image.open(io.BytesIO(api.get(out["contact_sheet_url"]).content))
    assert sheet.width >= 3 * 200 and sheet.height >= 2 * 200
    results = api.get(out["results_url"]).json()
    assert [i["external_id"] for i in results["items"]] == [i["external_id"] for i in items]
    assert results["params"]["palette"] == "cool_blue"
    assert receiver.events().count("job.item_completed") == 5 and receiver.events()[-1] == "job.completed"
    assert api.get(out["zip_url"].replace("signature=", "signature=0")).status_code == 403


def test_cancel_mid_batch_stops_the_rest(api, pipeline, astronaut):
    items = [{"external_id": f"m{i}", "image": _b64(astronaut)} for i in range(5)]
    job = api.post("/v1/batches", headers=api.a, json={"items": items, "platform": "slack"}).json()
    worker = worker_for(api, pipeline, max_concurrency=1)

    async def until_one_done():
        while worker.stats.completed < 1:
            await worker.step()
            await asyncio.sleep(0.01)
    asyncio.run(until_one_done())
    canceled = api.post(f"{job['status_url']}/cancel", headers=api.a)
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    drain(worker)
    final = api.get(job["status_url"], headers=api.a).json()
    assert final["state"] == "canceled" and final["progress"]["succeeded"] >= 1
    assert final["progress"]["succeeded"] + final["progress"]["canceled"] == 5
    assert worker.stats.completed == final["progress"]["succeeded"]          # nothing ran after the cancel
    assert api.post(f"{job['status_url']}/cancel", headers=api.b).status_code == 404


class Stall:
    """`call_for` of a runner that lets its first `n` items through the stages; every later item stops at its first
    stage and stays there, provably running (claimed, held, generating), until the runner dies."""

    def __init__(self, pipeline, n):
        self.pipeline, self.n, self.calls = pipeline, n, 0

    def __call__(self, job):
        self.calls += 1
        return self.pipeline._call if self.calls <= self.n else self._stall

    @property
    def stalled(self) -> int:
        return max(self.calls - self.n, 0)

    def _stall(self, stage, *args, method="run"):
        async def never():
            await asyncio.Event().wait()
        return asyncio.ensure_future(never())


def test_killing_the_runner_mid_batch_then_resuming_loses_and_doubles_nothing(api, pipeline, astronaut):
    items = [{"external_id": f"k{i}", "image": _b64(astronaut)} for i in range(5)]
    job = api.post("/v1/batches", headers=api.a, json={"items": items, "platform": "github"}).json()
    clock = ManualClock()
    stall = Stall(pipeline, 2)
    first = worker_for(api, pipeline, clock=clock, call_for=stall, max_concurrency=2, lease_s=60)

    async def run_then_die():
        while first.stats.completed < 2 or stall.stalled < 2:
            await first.step()
            await asyncio.sleep(0.01)
        await first.stop()          # dies with two items in flight: their leases stay in the store
    asyncio.run(run_then_die())
    listed = api.get(f"{job['status_url']}/items", headers=api.a).json()["items"]
    held = [i for i in listed if i["state"] == "running"]
    assert [i["index"] for i in held] == [2, 3] and [i["state"] for i in listed].count("queued") == 1
    done_before = {i["index"]: i["result"]["request_id"] for i in listed if i["state"] == "succeeded"}
    assert sorted(done_before) == [0, 1]
    second = worker_for(api, pipeline, clock=clock, max_concurrency=2)

    async def resume():
        await second.step()
        assert second.stats.items_seen == [(job["job_id"], 4)]    # the dead runner's items are leased: not taken
        clock.advance(61)           # its leases expire
        await second.drain(300)
    asyncio.run(resume())
    final = api.get(job["status_url"], headers=api.a).json()
    after = api.get(f"{job['status_url']}/items", headers=api.a).json()["items"]
    assert final["state"] == "succeeded" and final["progress"]["succeeded"] == 5
    redone = {idx for _, idx in second.stats.items_seen}
    assert not redone & set(done_before)                                     # finished items were not redone
    assert {i["index"] for i in held} <= redone                              # the interrupted ones were taken over
    assert {i["index"]: i["result"]["request_id"] for i in after if i["index"] in done_before} == done_before
    assert first.stats.completed + second.stats.completed == 5                # each item completed exactly once
    with zipfile.ZipFile(io.BytesIO(api.get(final["output"]["zip_url"]).content)) as archive:
        assert sorted(archive.namelist()) == [f"k{i}.png" for i in range(5)]


def test_batch_items_are_charged_as_they_run_and_a_short_balance_refuses_the_batch(api, pipeline, astronaut):
    """With credits on, a batch the balance cannot cover is refused with 402 before it is accepted; an accepted
    batch charges each billable item when it runs, and a failed item costs nothing."""
    from skimage import data

    from avatar.store.usage import read_usage
    ingress = api.ingress
    saved = ingress.config.model_dump()
    ingress.reconfigure({**saved, "accounts": {**saved["accounts"], "credits": True, "plans": {
        "standard": {"avatar_credits": 2, "requests_per_minute": 6000, "burst": 1000}}}})
    try:
        account = api.get("/v1/account", headers=api.b).json()["account_id"]
        ledger = ingress.billing.ledger
        ledger.grant(account, 3)
        jobs_before = len(api.get("/v1/jobs", headers=api.b).json()["jobs"])
        items = [{"external_id": "m1", "image": _b64(astronaut)}, {"external_id": "m2", "image": _b64(data.coffee())}]
        refused = api.post("/v1/batches", headers=api.b, json={"items": items, "platform": "slack"})
        assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_credits"
        assert refused.json()["credits_required"] == 4 and refused.headers["X-Credits-Remaining"] == "3"
        assert len(api.get("/v1/jobs", headers=api.b).json()["jobs"]) == jobs_before   # nothing was accepted
        ledger.grant(account, 1)
        accepted = api.post("/v1/batches", headers=api.b, json={"items": items, "platform": "slack"})
        assert accepted.status_code == 202, accepted.text
        drain(worker_for(api, pipeline))
        listed = api.get(f"{accepted.json()['status_url']}/items", headers=api.b).json()["items"]
        by_id = {i["external_id"]: i for i in listed}
        assert by_id["m1"]["billable"] and by_id["m2"]["state"] == "failed"
        assert ledger.balance(account) == 2                                  # one billable avatar at 2 credits
        rows = {r["request_id"]: r for r in read_usage(ingress.usage_uri, account=account).to_pylist()}
        assert rows[by_id["m1"]["result"]["request_id"]]["credits"] == 2
        assert rows[by_id["m1"]["result"]["request_id"]]["external_id"] == "m1"
    finally:
        ingress.reconfigure(saved)


# ---------------------------------------------------------------- hostile input
@pytest.mark.parametrize("name, body, status, field", [
    ("too many items", {"items": [{"external_id": f"x{i}", "image_url": "https://e.com/a.jpg"} for i in range(7)]},
     422, "items"),
    ("no items", {"items": []}, 422, "items"),
    ("items not a list", {"items": "all of them"}, 422, "items"),
    ("item without a source", {"items": [{"external_id": "a"}]}, 422, "items[0].image"),
    ("duplicate external ids", {"items": [{"external_id": "a", "image_url": "https://e.com/1.jpg"},
                                          {"external_id": "a", "image_url": "https://e.com/2.jpg"}]}, 422, "items"),
    ("external id too long", {"items": [{"external_id": "x" * 201, "image_url": "https://e.com/1.jpg"}]}, 422,
     "items[0].external_id"),
    ("external id not a string", {"items": [{"external_id": "a", "image_url": "https://e.com/1.jpg"},
                                            {"external_id": ["b"], "image_url": "https://e.com/2.jpg"}]}, 422,
     "items[1].external_id"),
    ("unknown field", {"items": [{"external_id": "a", "image_url": "https://e.com/1.jpg"}], "colour": "red"}, 422,
     "colour"),
    ("unknown palette", {"items": [{"external_id": "a", "image_url": "https://e.com/1.jpg"}], "palette": "x"}, 422,
     "palette"),
    ("wrong type", {"items": [{"external_id": "a", "image_url": "https://e.com/1.jpg"}], "match_lighting": "maybe"},
     422, "match_lighting"),
    ("bad webhook events", {"items": [{"external_id": "a", "image_url": "https://e.com/1.jpg"}],
                            "webhook_events": ["everything"]}, 422, "webhook_events"),
    ("webhook to metadata", {"items": [{"external_id": "a", "image_url": "https://e.com/1.jpg"}],
                             "webhook_url": "http://169.254.169.254/x"}, 422, "webhook_url"),
])
def test_hostile_batches_get_clear_4xx(api, name, body, status, field, monkeypatch):
    monkeypatch.setenv("AVATAR_WEBHOOK_ALLOW_PRIVATE", "false")
    resp = api.post("/v1/batches", headers=api.a, json=body)
    assert resp.status_code == status, f"{name}: {resp.text}"
    assert resp.json()["error"]["field"] == field, name
    code = resp.json()["error"]["code"]
    assert "[" not in code and "." not in code, code    # a stable code; the path is in `field`


def test_malformed_and_unauthorised_requests(api):
    assert api.post("/v1/batches", headers={**api.a, "content-type": "application/json"},
                    content=b"{oops").status_code == 400
    assert api.post("/v1/batches", headers={**api.a, "content-type": "text/plain"}, content=b"x").status_code == 415
    oversized = api.post("/v1/batches", headers={**api.a, "content-type": "application/json",
                                                 "content-length": str(300 * 2**20)}, content=b'{"items": []}')
    assert oversized.status_code == 413
    assert api.post("/v1/batches", json={"items": []}).status_code == 401
    assert api.get("/v1/jobs/job_0000").status_code == 401
    assert api.get("/v1/jobs/job_00000000000000000000", headers=api.a).status_code == 404
    assert api.get("/v1/jobs/../../etc", headers=api.a).status_code == 404
    assert api.post("/v1/avatar/generate", headers=ASYNC, json={"image_url": "https://e.com/a.jpg"}).status_code \
        == 401   # jobs belong to an account
    assert api.get("/v1/webhooks/secret").status_code == 401


@pytest.fixture(scope="module")
def canceled_batch(api) -> str:
    """A batch of account a, canceled before anything ran (a job to page through, and nothing for a runner)."""
    job = api.post("/v1/batches", headers=api.a, json={"items": [
        {"external_id": f"p{i}", "image_url": "https://e.com/a.jpg"} for i in range(3)]}).json()
    assert api.post(f"{job['status_url']}/cancel", headers=api.a).json()["state"] == "canceled"
    return job["status_url"]


@pytest.mark.parametrize("params, field", [
    ({"offset": str(2**63)}, "offset"), ({"offset": str(2**63 - 1)}, "offset"), ({"offset": "9" * 40}, "offset"),
    ({"offset": "-1"}, "offset"), ({"offset": "1e3"}, "offset"), ({"limit": str(2**63)}, "limit"),
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"),
])
def test_hostile_pages_of_items_get_422(api, canceled_batch, params, field):
    resp = api.get(f"{canceled_batch}/items", headers=api.a, params=params)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == {**resp.json()["error"], "code": "invalid_field", "field": field}


def test_pages_of_items_past_the_end_are_empty(api, canceled_batch):
    listed = api.get(f"{canceled_batch}/items", headers=api.a, params={"offset": 2**31 - 1}).json()
    assert listed["items"] == [] and listed["total"] == 3
    assert [i["external_id"] for i in api.get(f"{canceled_batch}/items", headers=api.a,
                                                params={"offset": 1, "limit": 1}).json()["items"]] == ["p1"]
    assert api.get("/v1/jobs", headers=api.a, params={"limit": str(2**63)}).json()["error"]["field"] == "limit"


def test_the_webhook_secret_rotates(api):
    first = api.get("/v1/webhooks/secret", headers=api.a).json()
    rotated = api.post("/v1/webhooks/secret/rotate", headers=api.a).json()
    assert rotated["secret"] != first["secret"] and rotated["previous_valid_until"]
    assert api.get("/v1/webhooks/secret", headers=api.a).json()["secret"] == rotated["secret"]
    assert api.get("/v1/webhooks/secret", headers=api.b).json()["secret"] not in (first["secret"],
                                                                                   rotated["secret"])


def test_multipart_batch_names_members_by_file_name(api, pipeline, astronaut):
    files = [("images", ("alice.jpg", _jpeg(astronaut), "image/jpeg")),
             ("images", ("bob.png", _jpeg(astronaut), "image/png"))]
    resp = api.post("/v1/batches", headers=api.a, files=files,
                    data={"platform": "teams", "match_lighting": "false", "webhook_events": "", "shape": "circle"})
    assert resp.status_code == 202, resp.text
    drain(worker_for(api, pipeline, max_concurrency=2))
    items = api.get(f"{resp.json()['status_url']}/items", headers=api.a).json()["items"]
    assert [(i["external_id"], i["state"]) for i in items] == [("alice", "succeeded"), ("bob", "succeeded")]
    delivered = items[0]["result"]["request_id"]      # a batch member's avatar takes its owner's feedback
    kept = api.post(f"/v1/avatar/{delivered}/feedback", headers=api.a, json={"verdict": "declined"})
    assert kept.status_code == 200, kept.text
    assert (kept.json()["style"], kept.json()["platform"]) == ("corporate_headshot", "teams")
    stranger = api.post(f"/v1/avatar/{delivered}/feedback", headers=api.b, json={"verdict": "declined"})
    assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "request_not_found"
    avatar = Image.open(io.BytesIO(api.get(items[0]["result"]["avatar_url"]).content))
    assert avatar.mode == "RGBA" and avatar.getpixel((2, 2))[3] == 0      # the team's template: a circle
    leftover = [k for k in api.ingress.storage.list("job-inputs") if resp.json()["job_id"] in k]
    assert leftover == []                     # uploads are deleted once their item is done


def test_style_training_requests_are_idempotent_too(api):
    key = {**api.a, "Idempotency-Key": "style-1"}
    body = {"images_uri": "s3://elsewhere/examples/"}           # refused: not a location the operator opened
    first = api.post("/v1/styles", headers=key, json=body)
    again = api.post("/v1/styles", headers=key, json=body)
    assert first.status_code == again.status_code == 422 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    other = api.post("/v1/styles", headers=key, json={"images_uri": "s3://other/"})
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_finished_jobs_expire_with_their_outputs(api, pipeline, astronaut, monkeypatch):
    monkeypatch.setenv("AVATAR_JOB_TTL_S", "3600")
    clock = ManualClock()
    resp = api.post("/v1/avatar/generate", headers={**api.a, **ASYNC}, json={"image": _b64(astronaut)})
    worker = worker_for(api, pipeline, clock=clock, sweep_every_s=10)
    drain(worker)
    job = api.get(resp.json()["status_url"], headers=api.a).json()
    assert job["state"] == "succeeded" and api.get(job["output"]["avatar_url"]).status_code == 200
    clock.advance(3590)
    drain(worker)                                     # the runner's sweep: not expired yet
    assert api.get(resp.json()["status_url"], headers=api.a).status_code == 200
    clock.advance(20)
    drain(worker)                                     # the runner's sweep
    assert api.get(resp.json()["status_url"], headers=api.a).status_code == 404
    assert api.get(job["output"]["avatar_url"]).status_code == 404      # the avatar is deleted too
