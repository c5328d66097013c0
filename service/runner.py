"""The job runner: takes queued jobs and batch items from the job store and runs them through the same stage graph
as a synchronous request, with bounded concurrency; finishes jobs (a batch's JSON, ZIP and contact sheet); delivers
webhooks with retries; deletes what has expired. The parts it calls live beside it: credit holds in
`service.holds`, a batch's files in `service.deliverables`, webhook sends in `service.delivery`; what stays here is
the loop and the items' leases.

`JobWorker` is plain asyncio over a `call_for(job)` that starts stages (Serve handles in the `JobRunner`
deployment, the in-process pipeline in tests), so its rules are tested without a cluster. Nothing it knows lives
only in memory: every claim is a lease in the store, renewed while the item runs. A runner that dies (replica
restart, node loss) loses only the items in flight; their leases expire and the next runner takes them again;
finished items are never redone, and a result is accepted only from the runner that still holds the item, so an item
is completed once. Each item's request id is fixed when the job is accepted, so a re-run overwrites the same output.

An item runs in three parts. Its credit hold is taken first. Then the generate work, the only part a runner ever
cancels: when a lease renewal finds that the store gave the item to a cancel or to another runner. Then its outcome:
the item's row (`finish_item`), and only once the store accepted it, the credit settle, the usage row (the billing
record), the `item_completed` webhook and the upload's deletion; nothing cancels that part short of the runner dying.
An outcome the store refuses leaves the item to whoever has it now, and a hold whose item ended without being settled
(canceled, failed by a claim after too many interruptions, or its runner died) is settled from the item's final state
by the next sweep of any runner. Time (leases, retries, sweeps) is read from an injected clock.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from avatar import webhooks
from avatar.clock import Clock, system_clock
from avatar.errors import InvalidRequest, NotFound
from avatar.flow import orchestrator
from avatar.job import AvatarJob, PhotoInput
from avatar.settings import settings
from avatar.spec import AvatarSpec
from avatar.store.credits import Ledger
from avatar.store.fetch import FetchPolicy
from avatar.store.jobs import BATCH, FAILED, SUCCEEDED, ItemRecord, JobRecord, JobStore
from avatar.store.storage import Storage, UrlSigner
from avatar.vision.imageio import b64decode_image
from service.answers import generate_response, item_view, job_view
from service.config import RunnerConfig
from service.deliverables import batch_outputs, delete_outputs
from service.delivery import WebhookSender, emit
from service.errors import as_avatar_error
from service.holds import ItemHolds, external_id

log = logging.getLogger("avatar.runner")

TRANSIENT = ("stage_unavailable", "overloaded", "timeout", "stage_failed")


@dataclass
class WorkerStats:
    """What this runner did since it started (tests and `JobRunner.stats`)."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    released: int = 0
    abandoned: int = 0          # items given up because the store says another runner or a cancel took them
    jobs_finished: int = 0
    deliveries: int = 0
    items_seen: list[tuple[str, int]] = field(default_factory=list)


class JobWorker:
    """Claims work from `store` and runs it: see the module docstring. `clock` is the time its leases, retries and
    sweeps read; pass the store's (tests pass one clock they move to both)."""

    def __init__(self, store: JobStore, storage: Storage, signer: UrlSigner, call_for: Callable[[AvatarJob], Any],
                 config: RunnerConfig = RunnerConfig(), gated: bool = True, telemetry: Any = None,
                 webhook_policy: FetchPolicy | None = None, retry: webhooks.RetryPolicy | None = None,
                 owner: str | None = None, ledger: Ledger | None = None, clock: Clock = system_clock) -> None:
        env = settings()
        self.store, self.storage, self.signer, self.call_for = store, storage, signer, call_for
        self.config, self.gated, self.telemetry, self.clock = config, gated, telemetry, clock
        self.holds = ItemHolds(ledger)   # charges items of jobs accepted with credit terms
        self.owner = owner or "runner_" + secrets.token_hex(6)
        self.webhooks = WebhookSender(
            store, self.owner,
            webhook_policy or FetchPolicy(timeout_s=env.webhook_timeout_s, max_bytes=2**20,
                                          allow_private=env.webhook_allow_private),
            retry or webhooks.RetryPolicy(env.webhook_retry_base_s, env.webhook_retry_max_s,
                                          env.webhook_retry_window_s, clock=clock))
        self.inflight: dict[tuple[str, int], asyncio.Task] = {}   # an item from its claim to its recorded outcome
        self.working: dict[tuple[str, int], asyncio.Task] = {}    # its generate work: the only part ever canceled
        self.stats = WorkerStats()
        self._jobs: dict[str, JobRecord] = {}
        self._wake = asyncio.Event()
        self._last_renew = self._last_sweep = float("-inf")

    @property
    def retry_due(self) -> float:
        """The latest webhook retry this runner scheduled (drain waits for it)."""
        return self.webhooks.retry_due

    # ------------------------------------------------------------ the loop
    async def run_forever(self) -> None:
        while True:
            try:
                busy = await self.step()
            except Exception:  # noqa: BLE001 - a store hiccup must not end the runner; the next step retries
                log.exception("runner step failed")
                busy = False
            if not busy:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_s)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    async def step(self) -> bool:
        """One pass: keep leases, start items up to the concurrency limit, finish settled jobs, send due webhooks,
        sweep expired jobs and unsettled holds. True when it started or finished something."""
        self._reap()
        await self._renew()
        busy = await self._claim_items()
        busy |= await self._finish_jobs()
        busy |= await self.webhooks.send_due(self.config.delivery_concurrency, self.config.delivery_per_account)
        self.stats.deliveries = self.webhooks.attempts
        await self._sweep()
        return busy

    async def drain(self, timeout_s: float = 120.0, retries: bool = True) -> None:
        """Run until nothing is queued, running or due (tests and the CLI); with `retries`, also until the webhook
        retries this runner scheduled are due on its clock (a test that moves the clock itself passes False)."""
        deadline = time.monotonic() + timeout_s
        idle_rounds = 0
        while time.monotonic() < deadline:
            busy = await self.step()
            if busy or self.inflight or self.webhooks.busy() or (retries and self.retry_due > self.clock()):
                idle_rounds = 0
            else:
                idle_rounds += 1
                if idle_rounds >= 2:
                    return
            await asyncio.sleep(0.02)
        raise TimeoutError("the runner did not drain in time")

    async def stop(self) -> None:
        """Abandon the work in flight (its leases expire and another runner takes it): a runner's death."""
        for task in self.inflight.values():
            task.cancel()
        await asyncio.gather(*self.inflight.values(), return_exceptions=True)
        await self.webhooks.stop()
        self.inflight.clear()
        self.working.clear()

    def _reap(self) -> None:
        for key, task in list(self.inflight.items()):
            if task.done():
                del self.inflight[key]

    def _due(self, last: float, every_s: float) -> bool:
        """Whether `every_s` passed since `last` on the clock (a clock set back counts as due)."""
        return not 0 <= self.clock() - last < every_s

    async def _renew(self) -> None:
        """Keep the leases of this runner's items (until their outcome is written); stop the generate work of those
        the store no longer gives this runner (canceled, or taken over after the lease lapsed)."""
        if not self.inflight or not self._due(self._last_renew, self.config.renew_every_s):
            return
        self._last_renew = self.clock()
        keys = list(self.inflight)
        held = await asyncio.to_thread(self.store.renew, self.owner, keys, self.config.lease_s)
        for key in keys:
            work = self.working.get(key)   # read after the await: an item that moved on to its outcome is kept
            if key not in held and work is not None and not work.done():
                work.cancel()

    # ------------------------------------------------------------ items
    async def _claim_items(self) -> bool:
        started = False
        while len(self.inflight) < self.config.max_concurrency:
            claimed = await asyncio.to_thread(self.store.claim_item, self.owner, self.config.lease_s,
                                              self.config.max_attempts)
            if claimed is None:
                break
            item, job_started = claimed
            if item.key in self.inflight:   # the store never hands a runner its own item; never run it twice
                log.error("item %s/%s was claimed again by the runner that runs it", item.job_id, item.idx)
                break
            self.stats.claimed += 1
            self.stats.items_seen.append(item.key)
            job = await self._job(item)
            if job_started:
                await asyncio.to_thread(emit, self.store, job, "started", job_view(job))
            task = asyncio.create_task(self._run_item(job, item))
            task.add_done_callback(_log_failure)
            self.inflight[item.key] = task
            started = True
        return started

    async def _job(self, item: ItemRecord) -> JobRecord:
        job = self._jobs.get(item.job_id)
        if job is None:
            job = await asyncio.to_thread(self.store.get_job, item.account, item.job_id)
            if job is None:
                raise NotFound(f"job {item.job_id} vanished")
            if len(self._jobs) > 1000:
                self._jobs.clear()
            self._jobs[item.job_id] = job
        return job

    async def _run_item(self, job: JobRecord, item: ItemRecord) -> None:
        """Hold, generate (cancellable), record the outcome (not cancellable); an unexpected error gives the item
        back to the queue rather than leaving it running under this runner forever."""
        try:
            await self._run(job, item)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("item %s/%s: unexpected error; giving it back to the queue", item.job_id, item.idx)
            await asyncio.to_thread(self.store.release_item, self.owner, item, self.config.retry_delay_s)
            raise

    async def _run(self, job: JobRecord, item: ItemRecord) -> None:
        started = time.perf_counter()
        avatar = self.avatar_job(job, item)
        try:   # the hold is never cut short: a hold taken while its item is canceled is given back by _lost
            await self.holds.hold(job, item, avatar)   # before any work; a re-run of the item finds its first hold
        except Exception as exc:  # noqa: BLE001 - too few credits: the item fails with the 402 body
            await self._item_failed(job, item, avatar, exc, _ms(started))
            return
        work = asyncio.create_task(self._generate(item, avatar))
        self.working[item.key] = work
        try:
            done = await work
        except asyncio.CancelledError:
            if _cancelling():   # the runner stops (dies): nothing more is written, the lease will lapse
                work.cancel()
                raise
            await self._lost(job, item)   # _renew: the store gave the item to a cancel or another runner
            return
        except Exception as exc:  # noqa: BLE001 - the item fails with the code a single generate would answer
            await self._item_failed(job, item, avatar, exc, _ms(started))
            return
        finally:
            self.working.pop(item.key, None)
        await self._item_succeeded(job, item, done, _ms(started))

    async def _generate(self, item: ItemRecord, avatar: AvatarJob) -> AvatarJob:
        source = await asyncio.to_thread(self.source, item)
        return await orchestrator.generate(avatar, source, self.call_for(avatar), self.gated)

    async def _item_succeeded(self, job: JobRecord, item: ItemRecord, done: AvatarJob, latency_ms: float) -> None:
        body = generate_response(self.signer, job.base_url, done, latency_ms).model_dump(mode="json")
        outputs = [k for k in (done.avatar_key, done.thumbnail_key) if k]
        if not await asyncio.to_thread(self.store.finish_item, self.owner, item, SUCCEEDED, body, None,
                                       done.billable, outputs):
            await self._lost(job, item)
            return
        self.stats.completed += 1
        charged = await self.holds.settle(job, item, done.billable)   # only once the store took the outcome
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.delivered, done, body["latency_ms"],   # journalled (fsync)
                                    credits=charged, external_id=external_id(job, item))
        await self._item_done(job, item)

    async def _item_failed(self, job: JobRecord, item: ItemRecord, avatar: AvatarJob, exc: Exception,
                           latency_ms: float) -> None:
        error = as_avatar_error(exc)
        if error.code in TRANSIENT and item.attempts < self.config.max_attempts:
            log.warning("item %s/%s: %s; retrying", item.job_id, item.idx, error.code)
            if await asyncio.to_thread(self.store.release_item, self.owner, item, self.config.retry_delay_s):
                self.stats.released += 1   # its hold stays: the next run of the item finds it
            else:
                await self._lost(job, item)
            return
        body = {**error.to_body(), "request_id": avatar.request_id}
        if not await asyncio.to_thread(self.store.finish_item, self.owner, item, FAILED, None, body, False):
            await self._lost(job, item)
            return
        self.stats.failed += 1
        await self.holds.release(job, item)   # a failed item costs nothing
        if self.telemetry is not None:
            avatar.input_quality_score = float(error.extra.get("input_quality_score", 0.0))
            await asyncio.to_thread(self.telemetry.refused, avatar, error.code, latency_ms)
        await self._item_done(job, item)

    async def _lost(self, job: JobRecord, item: ItemRecord) -> None:
        """The store no longer gives this runner the item: a cancel ended it (its hold goes back now) or another
        runner took it over (the hold is that runner's to settle)."""
        self.stats.abandoned += 1
        now = await asyncio.to_thread(self.store.items, job.account, job.job_id, item.idx, 1)
        await self.holds.settle_lost(job, now[0] if now else None)

    async def _item_done(self, job: JobRecord, item: ItemRecord) -> None:
        if "upload" in item.source:
            await asyncio.to_thread(self.storage.delete, item.source["upload"])
        if job.kind == BATCH and "item_completed" in job.webhook_events:
            items = await asyncio.to_thread(self.store.items, job.account, job.job_id, item.idx, 1)
            if items:
                await asyncio.to_thread(emit, self.store, job, "item_completed",
                                        {"job_id": job.job_id, "item": item_view(items[0])})

    @staticmethod
    def avatar_job(job: JobRecord, item: ItemRecord) -> AvatarJob:
        """The item's job from the job's stored spec (`avatar.spec.AvatarSpec`); nobody waits on it."""
        return AvatarSpec.model_validate(job.params).job(request_id=item.request_id, account=job.account,
                                                         asynchronous=True)

    def source(self, item: ItemRecord) -> PhotoInput:
        src = item.source
        if "error" in src:   # refused when the batch was accepted (e.g. not base64): the item fails with it
            e = src["error"]["error"]
            raise InvalidRequest(e["message"], field=e.get("field"), code=e["code"])
        cache = bool(src.get("cache"))
        if "upload" in src:
            return PhotoInput(data=self.storage.get(src["upload"]), field="image", cache=cache)
        if "image" in src:
            return PhotoInput(data=b64decode_image(src["image"]), field="image", cache=cache)
        if "url" in src:
            return PhotoInput(url=src["url"], field="image_url", cache=cache)
        return PhotoInput(input_id=src["input_id"], field="input_id")

    # ------------------------------------------------------------ jobs
    async def _finish_jobs(self) -> bool:
        finished = False
        if any(not task.done() for task in self.inflight.values()):
            return False   # an item of this runner is still recording its outcome and events: finish after it
        while True:
            job = await asyncio.to_thread(self.store.claim_settled_job, self.owner, self.config.lease_s)
            if job is None:
                return finished
            items = await asyncio.to_thread(self.store.items, job.account, job.job_id, 0, 1_000_000)
            if job.kind == BATCH:
                state, output, error = await asyncio.to_thread(batch_outputs, self.storage, self.signer, job, items,
                                                               self.config.contact_sheet_tile)
            else:
                one = items[0]
                state, output, error = (SUCCEEDED, one.result, None) if one.state == SUCCEEDED else \
                    (FAILED, None, one.error)
            if await asyncio.to_thread(self.store.complete_job, self.owner, job.job_id, state, output, error):
                self.stats.jobs_finished += 1
                self._jobs.pop(job.job_id, None)
                done = await asyncio.to_thread(self.store.get_job, job.account, job.job_id)
                if done is not None:
                    event = "completed" if state == SUCCEEDED else "failed"
                    await asyncio.to_thread(emit, self.store, done, event, job_view(done))
            finished = True

    # ------------------------------------------------------------ expiry
    async def _sweep(self) -> None:
        if not self._due(self._last_sweep, self.config.sweep_every_s):
            return
        self._last_sweep = self.clock()
        try:
            await asyncio.to_thread(self.holds.settle_unsettled, self.store)
        except Exception:  # noqa: BLE001 - the next sweep tries again; expiry must not wait on the ledger
            log.exception("settling unsettled holds failed")
        removed = await asyncio.to_thread(self.store.sweep)
        for job, items in removed:
            await asyncio.to_thread(delete_outputs, self.storage, job, items)


def _cancelling() -> bool:
    """Whether the running task itself is being canceled (not merely something it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("job item task failed: %r", task.exception(), exc_info=task.exception())


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


__all__ = ["JobWorker", "WorkerStats"]
