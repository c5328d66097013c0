"""The job store's rules on both backends (an SQLite file and a real PostgreSQL server), without a cluster: claims are exclusive and leased, a lost lease is taken over, a result
is accepted once and only from the holder, cancel refuses late results, accounts are isolated, expiry removes jobs,
idempotency keys replay or refuse, and webhook secrets rotate with a grace period. Time is a `ManualClock` the tests move:
nothing waits for a lease or TTL to run out."""

from __future__ import annotations

import threading

import pytest

from avatar.clock import ManualClock
from avatar.store.jobs import (BATCH, CANCELED, FAILED, GENERATE, QUEUED, RUNNING, SUCCEEDED, SqliteJobStore,
                               open_job_store)


@pytest.fixture()
def clock():
    return ManualClock()


@pytest.fixture()
def store(database_url, clock):
    """The job store on each backend (an SQLite file, and a database on a real PostgreSQL server), on `clock`."""
    return open_job_store(database_url, clock=clock)


def _batch(store, n=3, account="acc_a", **kw):
    return store.create_job(account, BATCH, {"style": "corporate_headshot"},
                            [(f"e{i}", {"url": f"https://x/{i}.jpg"}) for i in range(n)], "http://h", **kw)


def test_a_created_job_is_queued_with_its_items_and_scoped_to_its_account(store):
    job = _batch(store, 3)
    assert job.state == QUEUED and job.total == 3 and job.counts == {QUEUED: 3}
    assert store.get_job("acc_b", job.job_id) is None and store.items("acc_b", job.job_id) == []
    items = store.items("acc_a", job.job_id)
    assert [i.external_id for i in items] == ["e0", "e1", "e2"]
    assert len({i.request_id for i in items}) == 3
    assert [j.job_id for j in store.list_jobs("acc_a")] == [job.job_id] and store.list_jobs("acc_b") == []


def test_claims_are_exclusive_across_threads(store):
    job = _batch(store, 40)
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(owner):
        while (got := store.claim_item(owner, 60)) is not None:
            with lock:
                claimed.append(got[0].key)

    threads = [threading.Thread(target=worker, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted((job.job_id, i) for i in range(40))   # each item once, none lost
    assert store.get_job("acc_a", job.job_id).state == RUNNING


def test_claims_are_exclusive_across_processes(store, database_url):
    """Four runner processes (as on four nodes), each with its own connections, drain one batch: every item is
    claimed exactly once."""
    import multiprocessing

    import db_workers
    job = _batch(store, 40)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        claimed = pool.map(db_workers.claim_all, [(database_url, f"runner{i}") for i in range(4)])
    assert sorted(k for c in claimed for k in c) == sorted((job.job_id, i) for i in range(40))


def test_first_claim_starts_the_job_once(store):
    _batch(store, 2)
    assert store.claim_item("r1", 60)[1] is True
    assert store.claim_item("r1", 60)[1] is False


def test_an_expired_lease_is_taken_over_and_the_old_owner_cannot_finish(store, clock):
    job = _batch(store, 1)
    item, _ = store.claim_item("dead", 5)
    clock.advance(4.9)
    assert store.claim_item("r2", 60) is None          # leased: nobody else gets it
    clock.advance(0.2)
    again, _ = store.claim_item("r2", 60)
    assert again.key == item.key and again.attempts == 2
    assert not store.finish_item("dead", item, SUCCEEDED, {"x": 1})
    assert store.finish_item("r2", again, SUCCEEDED, {"x": 2})
    assert not store.finish_item("r2", again, SUCCEEDED, {"x": 3})   # finished once
    assert store.items("acc_a", job.job_id)[0].result == {"x": 2}


def test_renew_keeps_a_lease_and_reports_lost_ones(store, clock):
    job = _batch(store, 3)
    a, _ = store.claim_item("r1", 10)
    b, _ = store.claim_item("r1", 10)
    clock.advance(8)
    assert store.renew("r1", [a.key, b.key], 10) == {a.key, b.key}
    clock.advance(8)                                    # past the first lease, within the renewed one
    assert store.claim_item("r2", 60)[0].idx == 2
    store.cancel("acc_a", job.job_id)
    assert store.renew("r1", [a.key, b.key], 60) == set()


def test_a_runner_is_never_handed_back_its_own_item(store, clock):
    """A runner whose loop was busy past its lease still runs the item: it must not claim it a second time (that
    would run it twice and count an interruption); another runner may take it over."""
    job = _batch(store, 1)
    item, _ = store.claim_item("r1", 1)
    clock.advance(5)
    assert store.claim_item("r1", 60) is None
    assert store.finish_item("r1", item, SUCCEEDED, {"late": True})   # still its own: the result is accepted
    second = _batch(store, 1)
    lapsed, _ = store.claim_item("r1", 1)
    clock.advance(5)
    taken, _ = store.claim_item("r2", 60)
    assert taken.key == lapsed.key == (second.job_id, 0) and taken.attempts == 2
    assert store.items("acc_a", job.job_id)[0].result == {"late": True}


def test_items_are_found_by_request_id_across_accounts(store):
    a, b = _batch(store, 2), _batch(store, 1, account="acc_b")
    wanted = [store.items("acc_a", a.job_id)[1].request_id, store.items("acc_b", b.job_id)[0].request_id]
    found = store.items_by_request(wanted + ["req_unknown"])
    assert sorted((i.account, i.job_id, i.idx) for i in found) == [("acc_a", a.job_id, 1), ("acc_b", b.job_id, 0)]
    assert store.items_by_request([]) == []


def test_an_item_interrupted_too_often_fails_instead_of_looping(store, clock):
    job = _batch(store, 1)
    for owner in ("dying1", "dying2"):
        store.claim_item(owner, 1)
        clock.advance(2)
    assert store.claim_item("r", 60, max_attempts=2) is None
    item = store.items("acc_a", job.job_id)[0]
    assert item.state == FAILED and item.error["error"]["code"] == "stage_unavailable"


def test_release_requeues_after_a_delay(store, clock):
    _batch(store, 1)
    item, _ = store.claim_item("r1", 60)
    assert store.release_item("r1", item, delay_s=10)
    clock.advance(9.9)
    assert store.claim_item("r1", 60) is None
    clock.advance(0.2)
    assert store.claim_item("r1", 60)[0].key == item.key


def test_cancel_stops_queued_and_running_items_and_keeps_finished_ones(store):
    job = _batch(store, 3)
    first, _ = store.claim_item("r1", 60)
    store.finish_item("r1", first, SUCCEEDED, {"ok": True})
    second, _ = store.claim_item("r1", 60)
    canceled = store.cancel("acc_a", job.job_id)
    assert canceled.state == CANCELED and canceled.finished_at is not None
    assert canceled.counts == {SUCCEEDED: 1, CANCELED: 2}
    assert not store.finish_item("r1", second, SUCCEEDED, {"late": True})
    assert store.claim_item("r1", 60) is None
    assert store.cancel("acc_b", job.job_id) is None


def test_a_settled_job_is_claimed_once_for_finishing(store, clock):
    job = store.create_job("acc_a", GENERATE, {}, [(None, {"url": "https://x"})], "http://h")
    item, _ = store.claim_item("r1", 60)
    assert store.claim_settled_job("r1", 60) is None        # an item still runs
    store.finish_item("r1", item, SUCCEEDED, {"avatar_url": "u"})
    claimed = store.claim_settled_job("r1", 60)
    assert claimed.job_id == job.job_id and store.claim_settled_job("r2", 60) is None
    assert not store.complete_job("r2", job.job_id, SUCCEEDED, {"a": 1})
    assert store.complete_job("r1", job.job_id, SUCCEEDED, {"a": 1})
    done = store.get_job("acc_a", job.job_id)
    assert done.state == SUCCEEDED and done.output == {"a": 1} and done.expires_at == clock() + 86400


def test_expired_jobs_are_swept_with_their_items(store, clock):
    job = store.create_job("acc_a", GENERATE, {}, [(None, {"upload": "job-inputs/x/0"})], "http://h", ttl_s=60)
    store.cancel("acc_a", job.job_id)
    clock.advance(59)
    assert store.get_job("acc_a", job.job_id) is not None and store.sweep() == []
    clock.advance(2)
    assert store.get_job("acc_a", job.job_id) is None     # expired reads as missing at once
    removed = store.sweep()
    assert [(j.job_id, [i.source for i in items]) for j, items in removed] == \
        [(job.job_id, [{"upload": "job-inputs/x/0"}])]
    assert store.sweep() == []


def test_an_active_job_is_never_swept(store, clock):
    job = _batch(store, 1, ttl_s=1)
    clock.advance(10)
    assert store.sweep() == [] and store.claim_item("r", 60)[0].job_id == job.job_id


def test_idempotency_new_replay_conflict_in_progress_and_release(store):
    assert store.idempotency_begin("acc", "generate", "k1", "fp1", 60).status == "new"
    assert store.idempotency_begin("acc", "generate", "k1", "fp1", 60).status == "in_progress"
    assert store.idempotency_begin("acc", "generate", "k1", "fp2", 60).status == "conflict"
    store.idempotency_save("acc", "generate", "k1", 200, {"request_id": "req_1"})
    replay = store.idempotency_begin("acc", "generate", "k1", "fp1", 60)
    assert (replay.status, replay.status_code, replay.response) == ("replay", 200, {"request_id": "req_1"})
    assert store.idempotency_begin("other", "generate", "k1", "fp2", 60).status == "new"   # keys per account
    assert store.idempotency_begin("acc", "batch", "k1", "fp2", 60).status == "new"        # and per route
    store.idempotency_begin("acc", "generate", "k2", "fp", 60)
    store.idempotency_release("acc", "generate", "k2")
    assert store.idempotency_begin("acc", "generate", "k2", "fp9", 60).status == "new"


def test_webhook_secret_rotation_keeps_the_old_one_during_its_grace(store, clock):
    first, _ = store.webhook_secret("acc_a")
    assert first.startswith("whsec_") and store.webhook_secret("acc_a")[0] == first
    assert store.webhook_secret("acc_b")[0] != first
    second, _ = store.rotate_webhook_secret("acc_a", grace_s=60)
    assert second != first and store.webhook_secrets("acc_a") == [second, first]
    clock.advance(59)
    assert store.webhook_secrets("acc_a") == [second, first]
    clock.advance(2)
    assert store.webhook_secrets("acc_a") == [second]


def test_deliveries_are_leased_and_every_attempt_is_kept(store, clock):
    job = _batch(store, 1, webhook_url="https://hooks.example.com/x", webhook_events=["completed"])
    msg = store.add_delivery(job, "completed", '{"type":"job.completed"}')
    d = store.claim_delivery("r1", 60)
    assert d.delivery_id == msg and d.account == "acc_a" and store.claim_delivery("r2", 60) is None
    assert not store.record_attempt("r2", msg, {"status_code": 500}, None, "failed")
    store.record_attempt("r1", msg, {"at": clock(), "status_code": 500, "error": "HTTP 500"}, clock() + 30,
                         "pending")
    assert store.claim_delivery("r2", 60) is None                           # the retry is not due yet
    clock.advance(30)
    d = store.claim_delivery("r2", 60)
    store.record_attempt("r2", msg, {"at": clock(), "status_code": 204}, None, "delivered")
    [done] = store.deliveries(job.job_id)
    assert done.state == "delivered" and [a["status_code"] for a in done.attempts] == [500, 204]


def test_the_store_is_chosen_by_uri(tmp_path):
    assert isinstance(open_job_store(f"sqlite:///{tmp_path}/j.sqlite3"), SqliteJobStore)
    with pytest.raises(ValueError):
        open_job_store("mysql://nowhere/db")
    with pytest.raises(ValueError):
        open_job_store("sqlite://:memory:")
