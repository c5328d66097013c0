"""Jobs and batches on the real Serve graph (the session's app): an asynchronous generate goes through the
JobRunner deployment and the same stage replicas as a synchronous one, with a signed webhook; killing the runner's
replica mid-batch and letting Serve replace it resumes the batch with nothing lost or doubled."""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.serve, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def service(serve_app):
    """The session's app with a short runner lease and credits on for this module, and an account "acme" (with
    credits for every avatar of the module) whose key the client sends."""
    from avatar.settings import settings
    from avatar.store.accounts import open_account_store
    from avatar.store.credits import Ledger
    from avatar.store.database import open_database
    account, key = open_account_store().create_account("acme")   # the app's database (the session's AVATAR_DATA_DIR)
    Ledger(open_database(settings().resolved_database_url)).grant(account, 1000, "test")
    with serve_app.configured({
            "AvatarIngress": {"usage_flush_interval_s": 0,   # the tests poll job status several times a second
                              "accounts": {"credits": True,
                                           "plans": {"standard": {"requests_per_minute": 6000, "burst": 1000}}}},
            "JobRunner": {"lease_s": 4, "renew_every_s": 0.5, "poll_s": 0.2, "max_concurrency": 2}}):
        with serve_app.client(headers={"Authorization": f"Bearer {key}"}) as client:
            yield client


def _b64(image) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return base64.b64encode(buf.getvalue()).decode()


def _wait(client, url, done=lambda job: job["state"] in ("succeeded", "failed", "canceled"), timeout_s=300):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        job = client.get(url).json()
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job not done in time: {job}")


def test_async_generate_on_the_serve_graph(service, astronaut):
    secret = service.get("/v1/webhooks/secret").json()["secret"]
    with Receiver(secret) as receiver:
        accepted = service.post("/v1/avatar/generate", headers={"Prefer": "respond-async"},
                                json={"image": _b64(astronaut), "platform": "discord", "webhook_url": receiver.url})
        assert accepted.status_code == 202, accepted.text
        job = _wait(service, accepted.json()["status_url"])
        deadline = time.time() + 30
        while not receiver.received and time.time() < deadline:
            time.sleep(0.2)
    assert job["state"] == "succeeded" and job["output"]["style"] == "anime_character"
    assert Image.open(io.BytesIO(service.get(job["output"]["avatar_url"]).content)).size == (800, 800)
    assert receiver.events() == ["job.completed"]
    assert receiver.payloads()[0]["data"]["output"]["request_id"] == job["output"]["request_id"]


def test_a_batch_survives_the_runner_replica_being_killed(service, astronaut):
    import ray

    from avatar.store.jobs import open_job_store
    items = [{"external_id": f"emp-{i}", "image": _b64(astronaut)} for i in range(4)]
    accepted = service.post("/v1/batches", json={"items": items, "platform": "linkedin", "palette": "navy"})
    assert accepted.status_code == 202, accepted.text
    url = accepted.json()["status_url"]
    _wait(service, url, done=lambda job: job["progress"]["succeeded"] >= 1)
    before = {i["index"]: i["result"] for i in service.get(f"{url}/items").json()["items"]
              if i["state"] == "succeeded"}
    [runner] = [a for a in ray.util.list_named_actors(all_namespaces=True) if "JobRunner" in a["name"]]
    ray.kill(ray.get_actor(runner["name"], namespace=runner["namespace"]), no_restart=True)   # Serve replaces it
    job = _wait(service, url)
    assert job["state"] == "succeeded" and job["progress"]["succeeded"] == 4 and job["progress"]["failed"] == 0
    after = {i["index"]: i["result"] for i in service.get(f"{url}/items").json()["items"]}
    assert {k: after[k] for k in before} == before            # finished before the kill: kept, not redone
    assert len({r["request_id"] for r in after.values()}) == 4
    store = open_job_store()
    stored = store.items(store.get_job(job_id=job["job_id"], account=_account(store, job["job_id"])).account,
                         job["job_id"])
    assert all(i.attempts == 1 for i in stored if i.idx in before)
    assert all(i.state == "succeeded" for i in stored)
    zipped = service.get(job["output"]["zip_url"])
    assert zipped.status_code == 200 and zipped.content[:2] == b"PK"


def _account(store, job_id: str) -> str:
    import sqlite3
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT account FROM jobs WHERE job_id=?", (job_id,)).fetchone()[0]


def test_a_canceled_batch_gives_its_credits_back_on_the_running_service(service, astronaut):
    """With credits on, a team batch of 3 canceled as soon as the runner has started it costs nothing: whatever the
    runner had claimed and held is given back, and the balance ends where it was (an avatar finished before the cancel
    would be the only charge)."""
    from avatar.store.accounts import open_account_store
    from avatar.store.credits import HELD, Ledger
    from avatar.store.database import open_database
    from avatar.store.jobs import open_job_store
    from avatar.settings import settings
    account, key = open_account_store().create_account("canceling team")
    ledger = Ledger(open_database(settings().resolved_database_url))
    ledger.grant(account, 200, "test")
    auth = {"Authorization": f"Bearer {key}"}
    assert service.get("/v1/account", headers=auth).json()["credits_enabled"]
    items = [{"external_id": f"team-{i}", "image": _b64(astronaut)} for i in range(3)]
    accepted = service.post("/v1/batches", headers=auth, json={"items": items, "platform": "slack"})
    assert accepted.status_code == 202, accepted.text
    url = accepted.json()["status_url"]
    deadline = time.time() + 120          # cancel once the runner has claimed work, as a customer's quick cancel finds
    while service.get(url, headers=auth).json()["progress"]["running"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert service.post(f"{url}/cancel", headers=auth).json()["state"] == "canceled"
    store = open_job_store()

    def unsettled() -> list:
        """Items the runner claimed whose hold is still taken, or not taken yet (it is taken before any work)."""
        charges = [(item, ledger.charge(item.request_id)) for item in store.items(account, accepted.json()["job_id"])]
        return [(item.idx, item.attempts, charge) for item, charge in charges
                if (charge.state == HELD if charge else item.attempts > 0)]
    deadline = time.time() + 120          # the runner stops canceled work at its next lease renewal
    while unsettled() and time.time() < deadline:
        time.sleep(0.2)
    assert not unsettled()
    listed = service.get(f"{url}/items", headers=auth).json()["items"]
    billable = sum(bool(i["billable"]) for i in listed if i["state"] == "succeeded")
    assert service.get("/v1/account", headers=auth).json()["balance"] == 200 - billable
    assert ledger.balance(account) == 200 - billable
