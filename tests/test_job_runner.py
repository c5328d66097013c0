"""The job runner's races, driven at their seams on both backends (an SQLite file and a real PostgreSQL server) with
the real job store and credit ledger; the stage graph is a stand-in that passes the job along, so each run takes
milliseconds. Nothing here sleeps: time is a `ManualClock` the tests move, and every interleaving is forced with
events at the seam (a stage that waits at a gate, a store whose renew or finish waits for the other side).

What they hold the runner to: an outcome the store accepted is recorded whole (usage row, webhook, upload deletion,
credits) whatever a concurrent lease renewal finds; a runner never claims an item it already runs; and a credit hold
is given back on every path that does not deliver a billable avatar: a cancel before, during or after the generate
work, a failure, a runner that died before its item was canceled or failed, while an item taken over by another
runner is charged once, by the runner that finished it.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import threading
from typing import Any

import numpy as np
import pytest
from PIL import Image

from avatar.clock import ManualClock
from avatar.errors import InvalidRequest
from avatar.flow.names import Stage
from avatar.store.accounts import SqlAccountStore
from avatar.store.credits import DELIVERED, HELD, REFUSED, Ledger
from avatar.store.database import open_database
from avatar.store.fetch import FetchPolicy
from avatar.store.jobs import BATCH, CANCELED, FAILED, RUNNING, SUCCEEDED, new_job_id, open_job_store
from avatar.store.storage import Storage, UrlSigner
from service.config import RunnerConfig
from service.runner import JobWorker
from service.submit import upload_key

pytestmark = pytest.mark.timeout(120)

BALANCE = 200
SEAM_TIMEOUT_S = 30   # only a broken test waits this long: every wait below is released by the other side


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class Stages:
    """Stands in for the stage graph: every stage hands the job on and SAVE_AVATAR stores a billable avatar. While
    `closed`, each generate waits at SAVE_AVATAR until `open()`; `reached(n)` waits until n generates are there."""

    def __init__(self, storage: Storage, closed: bool = False, error: Exception | None = None) -> None:
        self.storage, self.error = storage, error
        self.gate = asyncio.Event()
        if not closed:
            self.gate.set()
        self.waiting = 0
        self._arrived = asyncio.Event()

    def open(self) -> None:
        self.gate.set()

    async def reached(self, n: int) -> None:
        while self.waiting < n:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), SEAM_TIMEOUT_S)

    def call_for(self, avatar: Any):
        return self._call

    def _call(self, stage: Stage, *args: Any, method: str = "run") -> asyncio.Future:
        async def run() -> Any:
            ready = [await a if inspect.isawaitable(a) else a for a in args]
            job = ready[0]
            if stage != Stage.SAVE_AVATAR:
                return job
            self.waiting += 1
            self._arrived.set()
            await self.gate.wait()
            if self.error is not None:
                raise self.error
            job.avatar_key, job.thumbnail_key = f"avatars/{job.request_id}.png", f"avatars/{job.request_id}_t.png"
            for key in (job.avatar_key, job.thumbnail_key):
                self.storage.put(key, _png())
            job.billable, job.likeness_score, job.input_quality_score, job.face_count = True, 0.9, 0.9, 1
            return job
        return asyncio.ensure_future(run())


class Seams:
    """The job store with hooks: `before[name]` / `after[name]` run in the store call's worker thread, around the
    real call (`after` gets its result)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.store, name)
        if not callable(real) or name not in ("claim_item", "renew", "finish_item"):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if name in self.before:
                self.before[name](*args)
            result = real(*args, **kwargs)
            if name in self.after:
                self.after[name](result)
            return result
        return call


class Usage:
    """Stands in for the runner's telemetry: the usage rows (the billing record) it would write."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int]] = []          # delivered avatars: (request id, credits charged)
        self.refusals: list[tuple[str, str]] = []

    def delivered(self, job: Any, latency_ms: float, credits: int = 0, external_id: str | None = None) -> None:
        self.rows.append((job.request_id, credits))

    def refused(self, job: Any, code: str, latency_ms: float, external_id: str | None = None) -> None:
        self.refusals.append((job.request_id, code))


class Rig:
    """One account with credits, the real store and ledger on one database, and runners over them."""

    def __init__(self, database_url: str, tmp_path: Any) -> None:
        self.clock = ManualClock()
        self.db = open_database(database_url)
        self.account = SqlAccountStore(self.db, pepper=b"test pepper").create_account("Acme")[0]
        self.ledger = Ledger(self.db)
        self.ledger.grant(self.account, BALANCE)
        self.store = Seams(open_job_store(database_url, clock=self.clock))
        self.storage = Storage(str(tmp_path / "storage"))
        self.signer = UrlSigner(b"k" * 32)

    def batch(self, n: int, webhook: bool = False) -> Any:
        """A team batch of `n` uploaded photos, accepted with credit terms (1 credit an avatar)."""
        job_id = new_job_id()
        for i in range(n):
            self.storage.put(upload_key(job_id, i), b"photo")
        params = {"style": "corporate_headshot", "platform": "linkedin", "size": 256, "intensity": 0.5,
                  "billing": {"price": 1, "seat_price": None, "seat_s": None}}
        hook = {"webhook_url": "http://127.0.0.1:9/hook",   # refused by the runner's policy: nothing is sent
                "webhook_events": ["item_completed"]} if webhook else {}
        return self.store.create_job(self.account, BATCH, params,
                                     [(f"emp-{i}", {"upload": upload_key(job_id, i)}) for i in range(n)],
                                     "http://h", job_id=job_id, **hook)

    def worker(self, stages: Stages, owner: str, **config: Any) -> JobWorker:
        cfg = RunnerConfig(**{"lease_s": 60, "renew_every_s": 1, "poll_s": 0.05, "sweep_every_s": 3600, **config})
        return JobWorker(self.store, self.storage, self.signer, stages.call_for, cfg, gated=False,
                         telemetry=Usage(), webhook_policy=FetchPolicy(timeout_s=1), owner=owner,
                         ledger=self.ledger, clock=self.clock)

    def items(self, job: Any) -> list[Any]:
        return self.store.items(self.account, job.job_id)

    def holds(self, job: Any) -> list[str]:
        return [self.ledger.charge(i.request_id).state if self.ledger.charge(i.request_id) else "none"
                for i in self.items(job)]


@pytest.fixture()
def rig(database_url, tmp_path) -> Rig:
    return Rig(database_url, tmp_path)


async def _settle(worker: JobWorker) -> None:
    """Step the runner until nothing is in flight (no retry is ever due: the clock does not move)."""
    await worker.drain(timeout_s=SEAM_TIMEOUT_S, retries=False)


def _wait(event: threading.Event) -> None:
    if not event.wait(SEAM_TIMEOUT_S):
        raise TimeoutError("the other side of the seam never came")


# ---------------------------------------------------------------- an outcome is never cut short
def test_an_outcome_written_while_a_renewal_is_in_flight_is_recorded_whole(rig):
    """The renewal's UPDATE misses an item whose outcome was written meanwhile (its owner is cleared): the runner
    must not stop that item, or its usage row, `item_completed` webhook and upload deletion are lost."""
    job = rig.batch(1, webhook=True)
    stages = Stages(rig.storage, closed=True)
    worker = rig.worker(stages, "r1")
    renewing, finished, renewed = threading.Event(), threading.Event(), threading.Event()

    def renew_after_the_finish(*_: Any) -> None:
        renewing.set()
        _wait(finished)

    def finish_before_the_renewal_returns(accepted: bool) -> None:
        finished.set()
        _wait(renewed)

    rig.store.before["renew"] = renew_after_the_finish
    rig.store.after["renew"] = lambda held: renewed.set()
    rig.store.after["finish_item"] = finish_before_the_renewal_returns

    async def scenario() -> None:
        await worker.step()                                  # claims the item; its generate waits at the gate
        await stages.reached(1)
        renewal = asyncio.create_task(worker.step())         # the renewal's keys include the running item
        await asyncio.to_thread(_wait, renewing)
        stages.open()                                        # the outcome is written while the renewal runs
        await renewal
        await _settle(worker)
    asyncio.run(scenario())

    [item] = rig.items(job)
    assert item.state == SUCCEEDED and worker.stats.completed == 1 and worker.stats.abandoned == 0
    assert worker.telemetry.rows == [(item.request_id, 1)]                   # the billing record
    assert [d.event for d in rig.store.deliveries(job.job_id)] == ["item_completed"]
    assert rig.storage.list(f"job-inputs/{job.job_id}") == []                     # the upload is deleted
    assert rig.ledger.balance(rig.account) == BALANCE - 1 and rig.holds(job) == [DELIVERED]


def test_a_runner_whose_lease_lapsed_does_not_claim_its_own_item_again(rig):
    """Stages running on the event loop can hold it past the lease: the runner must not take its own running item
    a second time (two runs of one item, an attempt counted for nothing)."""
    job = rig.batch(1)
    stages = Stages(rig.storage, closed=True)
    worker = rig.worker(stages, "r1", lease_s=1, renew_every_s=3600, max_concurrency=2)

    async def scenario() -> None:
        await worker.step()
        await stages.reached(1)
        await worker.step()                                  # renews the lease once (the next renewal: in an hour)
        first = worker.inflight[(job.job_id, 0)]
        rig.clock.advance(5)                                 # the loop was busy: no renewal, the lease lapsed
        await worker.step()
        assert worker.inflight[(job.job_id, 0)] is first and worker.stats.claimed == 1
        stages.open()
        await _settle(worker)
    asyncio.run(scenario())

    [item] = rig.items(job)
    assert item.state == SUCCEEDED and item.attempts == 1 and worker.stats.completed == 1
    assert worker.telemetry.rows == [(item.request_id, 1)] and stages.waiting == 1


# ---------------------------------------------------------------- credit holds go back on every path
CANCEL_POINTS = {   # when the batch is canceled -> the holds its 3 items end with (no hold: never claimed)
    "before the claim": ["none"] * 3,
    "after the first claim, before its hold": [REFUSED, "none", "none"],
    "during the generate": [REFUSED] * 3,
    "after the generate, before the finish": [REFUSED] * 3}


@pytest.mark.parametrize("when", CANCEL_POINTS)
def test_a_canceled_batch_costs_nothing(rig, when):
    """A team batch of 3 canceled at any point: nothing billable, every hold given back, the balance as before."""
    job = rig.batch(3)
    gated = when in ("during the generate", "after the generate, before the finish")
    stages = Stages(rig.storage, closed=gated)
    worker = rig.worker(stages, "r1", max_concurrency=3)
    cancel = lambda *_: rig.store.cancel(rig.account, job.job_id)   # noqa: E731
    if when == "before the claim":
        cancel()
    elif when == "after the first claim, before its hold":
        rig.store.after["claim_item"] = lambda claimed: claimed and cancel()
    elif when == "after the generate, before the finish":
        rig.store.before["finish_item"] = cancel

    async def scenario() -> None:
        await worker.step()
        if gated:
            await stages.reached(3)
            assert rig.holds(job) == [HELD] * 3 and rig.ledger.balance(rig.account) == BALANCE - 3
        if when == "during the generate":
            cancel()
            rig.clock.advance(1)   # the next renewal finds the items canceled and stops their work at the gate
        else:
            stages.open()
        await _settle(worker)
    asyncio.run(scenario())

    assert rig.store.get_job(rig.account, job.job_id).state == CANCELED
    assert [i.state for i in rig.items(job)] == [CANCELED] * 3
    assert rig.ledger.balance(rig.account) == BALANCE
    assert rig.holds(job) == CANCEL_POINTS[when]
    assert worker.stats.completed == 0 and worker.telemetry.rows == []
    assert worker.stats.abandoned == CANCEL_POINTS[when].count(REFUSED)


def test_a_failed_item_gives_its_hold_back_after_its_outcome_is_recorded(rig):
    job = rig.batch(2)
    worker = rig.worker(Stages(rig.storage, error=InvalidRequest("no face", code="no_face_detected")), "r1")
    asyncio.run(_settle(worker))
    assert [i.state for i in rig.items(job)] == [FAILED] * 2 and rig.holds(job) == [REFUSED] * 2
    assert rig.ledger.balance(rig.account) == BALANCE and len(worker.telemetry.refusals) == 2


def test_an_item_taken_over_after_a_lapsed_lease_is_charged_once_by_the_runner_that_finished_it(rig):
    """Runner A's lease lapses, B takes the item over (the same hold: one request id). A's late result is refused
    and A must leave the hold alone: B, still running, settles it."""
    job = rig.batch(1)
    a_stages, b_stages = Stages(rig.storage, closed=True), Stages(rig.storage, closed=True)
    a = rig.worker(a_stages, "runner-a", lease_s=5, renew_every_s=3600)
    b = rig.worker(b_stages, "runner-b", lease_s=60)

    async def scenario() -> None:
        await a.step()
        await a_stages.reached(1)
        rig.clock.advance(10)                                # A's loop was busy past its lease
        await b.step()
        await b_stages.reached(1)
        assert rig.items(job)[0].owner == "runner-b" and rig.holds(job) == [HELD]
        a_stages.open()
        await _settle(a)                                     # A's finish is refused: the item is B's
        assert rig.holds(job) == [HELD] and a.stats.abandoned == 1 and a.telemetry.rows == []
        b_stages.open()
        await _settle(b)
    asyncio.run(scenario())

    [item] = rig.items(job)
    assert item.state == SUCCEEDED and item.attempts == 2 and b.stats.completed == 1
    assert rig.holds(job) == [DELIVERED] and rig.ledger.balance(rig.account) == BALANCE - 1
    assert b.telemetry.rows == [(item.request_id, 1)]


@pytest.mark.parametrize("then", ["the job is canceled", "the item is interrupted too often"])
def test_the_hold_of_a_runner_that_died_is_given_back_by_the_next_runner(rig, then):
    """A runner dies mid-item, holding its credits. When nobody will run the item again (its job is canceled, or
    the next claim fails it after too many interruptions), the next runner's sweep gives the hold back."""
    job = rig.batch(1)
    dead_stages = Stages(rig.storage, closed=True)
    dead = rig.worker(dead_stages, "dead", lease_s=5)
    survivor = rig.worker(Stages(rig.storage), "survivor", max_attempts=1)

    async def scenario() -> None:
        await dead.step()
        await dead_stages.reached(1)
        await dead.stop()                                    # dies with the item running and its hold taken
        assert rig.items(job)[0].state == RUNNING and rig.holds(job) == [HELD]
        if then == "the job is canceled":
            rig.store.cancel(rig.account, job.job_id)
        rig.clock.advance(10)                                # the dead runner's lease lapses
        await _settle(survivor)
    asyncio.run(scenario())

    [item] = rig.items(job)
    assert item.state == (CANCELED if then == "the job is canceled" else FAILED)
    assert rig.holds(job) == [REFUSED] and rig.ledger.balance(rig.account) == BALANCE
    assert survivor.telemetry.rows == []


def test_a_runner_that_died_is_replaced_and_the_item_is_charged_once(rig):
    job = rig.batch(1)
    dead_stages = Stages(rig.storage, closed=True)
    dead = rig.worker(dead_stages, "dead", lease_s=5)
    survivor = rig.worker(Stages(rig.storage), "survivor")

    async def scenario() -> None:
        await dead.step()
        await dead_stages.reached(1)
        await dead.stop()
        rig.clock.advance(10)
        await _settle(survivor)
    asyncio.run(scenario())

    [item] = rig.items(job)
    assert item.state == SUCCEEDED and item.attempts == 2 and item.owner is None
    assert rig.holds(job) == [DELIVERED] and rig.ledger.balance(rig.account) == BALANCE - 1
    assert survivor.telemetry.rows == [(item.request_id, 1)]
