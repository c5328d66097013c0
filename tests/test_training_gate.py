"""Gated training jobs on a real local Ray: per-account limits (429), a job waits `queued` with no process until the
node's training budget has room, and cancelling a running job leaves no actor of it alive (Train's detached
placement-group cleaner included)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from avatar.errors import TooManyRequests
from avatar.store.accounts import open_account_store
from training.dataset import make_demo_examples

pytestmark = pytest.mark.timeout(600)

LONG = {"epochs": 50, "steps_per_epoch": 200, "max_failures": 0}


@pytest.fixture(scope="module")
def examples_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="gate-examples-"))
    make_demo_examples(d, count=50, seed=3, size=200)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def env(tmp_path, ray_session):
    accounts_uri = f"sqlite:///{tmp_path / 'accounts.sqlite3'}"
    store = open_account_store(accounts_uri)
    a, _ = store.create_account("A")
    b, _ = store.create_account("B")
    return {"storage": str(tmp_path / "storage"), "accounts": accounts_uri, "a": a, "b": b}


def _actor_state(name: str) -> str | None:
    from ray._private import state
    from training.jobs import NAMESPACE
    states = [a["State"] for a in state.actors().values() if a["Name"] == name and a.get("RayNamespace", NAMESPACE)]
    return states[-1] if states else None


def _wait(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def test_an_account_over_its_limits_gets_429(env, examples_dir):
    from training.jobs import JobLimits, StyleJobs
    jobs = StyleJobs(env["storage"], env["accounts"], JobLimits(max_running=1, max_queued=1),
                     num_workers=1, cpus_per_worker=0.5, **LONG)
    first = jobs.submit(env["a"], str(examples_dir))
    second = jobs.submit(env["a"], str(examples_dir))
    try:
        with pytest.raises(TooManyRequests) as err:
            jobs.submit(env["a"], str(examples_dir))
        assert err.value.status == 429 and err.value.code == "too_many_jobs" and "1 run" in err.value.message
        assert [j.job_id for j in jobs.list(env["a"])] == [first.job_id, second.job_id]   # nothing was started
        # the account's second job waits while its first runs, though the node has room for both
        _wait(lambda: jobs.status(env["a"], first.job_id).state == "running", 180, "the first job to run")
        time.sleep(3)
        assert jobs.status(env["a"], second.job_id).state == "queued"
    finally:   # the queued one first: it cannot take the turn the running one gives back
        jobs.delete(env["a"], second.job_id)
        jobs.delete(env["a"], first.job_id)


def test_a_job_stays_queued_without_a_process_until_the_budget_has_room(env, examples_dir):
    from training.gate import TRAINING_CPU_RESOURCE, TRAINING_MEMORY_RESOURCE, alive, descendants
    from training.jobs import NAMESPACE, StyleJobs
    import ray
    # the earlier test's jobs are gone once their resources are back: this job needs the node's whole budget
    def held() -> dict[str, float]:
        free, total = ray.available_resources(), ray.cluster_resources()
        return {k: total[k] - free.get(k, 0.0) for k in ("CPU", TRAINING_CPU_RESOURCE, TRAINING_MEMORY_RESOURCE)
                if total[k] - free.get(k, 0.0) > 1e-6}
    _wait(lambda: not held(), 120, lambda: f"the node's resources to be free, still held: {held()}")
    big = StyleJobs(env["storage"], env["accounts"], num_workers=1, cpus_per_worker=2.0, **LONG)
    running = big.submit(env["a"], str(examples_dir))       # takes the node's whole training CPU budget
    _wait(lambda: big.status(env["a"], running.job_id).epoch >= 1, 240,
          lambda: f"the first job's first epoch: {big.status(env['a'], running.job_id)}")
    waiting = big.submit(env["b"], str(examples_dir))
    try:
        time.sleep(5)
        assert big.status(env["b"], waiting.job_id).state == "queued"
        assert _actor_state(waiting.job_id) in ("PENDING_CREATION", "DEPENDENCIES_UNREADY"), \
            _actor_state(waiting.job_id)   # no driver process, no Train controller while it waits

        driver = ray.get_actor(running.job_id, namespace=NAMESPACE)
        tree = descendants(driver._actor_id.hex())
        classes = {a["ActorClassName"] for a in tree}
        assert {"TrainController", "PlacementGroupCleaner"} <= classes, classes
        ids = [driver._actor_id.hex(), *(a["ActorID"] for a in tree)]

        big.delete(env["a"], running.job_id)
        _wait(lambda: not alive(ids), 60, "every actor of the cancelled job to end")
        assert big.status(env["a"], running.job_id) is None
        # its budget is free again: the queued job starts
        _wait(lambda: _actor_state(waiting.job_id) == "ALIVE", 120, "the queued job's driver to start")
    finally:
        big.delete(env["b"], waiting.job_id)
        _wait(lambda: _actor_state(waiting.job_id) in (None, "DEAD"), 60, "the second job to end")
    from ray._private import state
    cleaners = [a for a in state.actors().values()
                if a["ActorClassName"] == "PlacementGroupCleaner" and a["State"] != "DEAD"]
    assert not cleaners, "a placement-group cleaner outlived its job"


def test_a_job_bigger_than_the_budget_is_refused_at_submission(env, examples_dir):
    from training.jobs import StyleJobs
    from training.runner import ResourcesUnavailable
    with pytest.raises(ResourcesUnavailable):
        StyleJobs(env["storage"], env["accounts"], num_workers=2, cpus_per_worker=2.0, **LONG).submit(
            env["a"], str(examples_dir))


def test_cancel_lets_a_started_driver_stop_itself_before_killing_it(env):
    """A driver that holds a process may be starting its Train run: killed then, the run's placement group is left
    holding the node's CPUs. `cancel` waits for it to see the cancelled record and stop on its own."""
    import ray
    from training.jobs import NAMESPACE, cancel
    from training.records import CANCELLED, ProgressWriter, new_job_id

    job_id = new_job_id()
    progress = ProgressWriter(env["storage"], env["a"], job_id)
    progress.update(state="running")
    marker = Path(env["storage"]) / "stopped-cleanly"

    @ray.remote(num_cpus=0, max_restarts=0)
    class StartingDriver:
        """Stands in for a driver between its turn and its Train controller: it stops itself, which takes a while."""

        def run(self) -> None:
            while getattr(progress.read(), "state", None) != CANCELLED:
                time.sleep(0.05)
            time.sleep(1.0)   # tearing down what it had started
            marker.write_text("yes")
            ray.actor.exit_actor()

    driver = StartingDriver.options(name=job_id, namespace=NAMESPACE).remote()
    driver.run.remote()
    _wait(lambda: _actor_state(job_id) == "ALIVE", 60, "the driver to start")
    progress.update(state=CANCELLED)
    cancel(job_id, grace_s=30)
    assert marker.exists(), "cancel killed a driver that was stopping itself"
    assert _actor_state(job_id) == "DEAD"
