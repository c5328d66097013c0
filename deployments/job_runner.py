"""JobRunner: the deployment that runs asynchronous jobs and team batches (`service.runner.JobWorker`) over the same
stage handles as the ingress, started with the replica and restarted with it."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from avatar.flow.names import Stage
from avatar.settings import settings
from avatar.store.credits import Ledger
from avatar.store.database import open_database
from avatar.store.jobs import open_job_store
from avatar.store.storage import Storage, UrlSigner
from service.config import RUNNER, RunnerConfig, runner_config
from service.handles import replica_location, stage_call
from service.runner import JobWorker
from service.telemetry import Telemetry


@serve.deployment(name=RUNNER, num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=16)
class JobRunner:
    """A `JobWorker` over the stage handles, started with the replica and restarted with it. Several replicas may
    run side by side: the store's leases keep them from running one item twice."""

    def __init__(self, **stages: Any) -> None:
        env = settings()
        self.stages = {Stage(name): handle for name, handle in stages.items() if handle is not None}
        self.config = RunnerConfig()
        self.worker = JobWorker(open_job_store(env.resolved_jobs_uri), Storage(env.resolved_storage_uri),
                                UrlSigner(env.url_signing_key(), env.url_ttl_s),
                                lambda job: stage_call(self.stages, job), self.config,
                                gated=Stage.QUALITY_GATE in self.stages,
                                telemetry=Telemetry(env.resolved_usage_uri,
                                                    journal_dir=env.resolved_usage_journal_dir),
                                ledger=Ledger(open_database(env.resolved_database_url)))
        self._task: asyncio.Task | None = None

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        self.config = runner_config(user_config)
        self.worker.config = self.config
        self.worker.telemetry.flush_interval_s = self.config.usage_flush_interval_s
        self._start()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.worker.run_forever())

    async def wake(self) -> None:
        self._start()
        self.worker.wake()

    async def stats(self) -> dict[str, Any]:
        s = self.worker.stats
        return {"owner": self.worker.owner, "node_id": replica_location()["node_id"], "claimed": s.claimed,
                "completed": s.completed, "failed": s.failed,
                "released": s.released, "abandoned": s.abandoned, "jobs_finished": s.jobs_finished,
                "deliveries": s.deliveries, "inflight": len(self.worker.inflight)}

    async def check_health(self) -> None:
        self._start()
        if self._task is not None and self._task.done() and self._task.exception() is not None:
            raise RuntimeError(f"job loop ended: {self._task.exception()!r}")

    def __del__(self) -> None:
        telemetry = getattr(getattr(self, "worker", None), "telemetry", None)
        if telemetry is not None:
            telemetry.close()
