"""Admission of style training jobs: per-node budgets as Ray custom resources, per-account limits, and the cleanup of
everything a cancelled job started.

A job's driver is a detached actor that asks for the job's share of two node resources the service defines when it
starts Ray: `avatar_training_mb` (an estimate of the job's memory: driver and Train controller, plus each worker) and
`avatar_training_cpu` (its workers' CPUs). Until a node has both free, Ray keeps the actor pending: no process, no
controller, no memory, and the job's record says `queued`. So the total training memory per node is capped by the
node's `avatar_training_mb` (`AVATAR_TRAINING_MEMORY_MB`), whatever the number of accounts or jobs. A cluster that
does not define the resources runs jobs ungated (set them with `ray start --resources`, see README).

Nothing here imports torch or Ray Train.
"""

from __future__ import annotations

import os
from typing import Any, Callable

TRAINING_MEMORY_RESOURCE = "avatar_training_mb"
TRAINING_CPU_RESOURCE = "avatar_training_cpu"


def training_memory_mb() -> int:
    """This node's training memory budget (`AVATAR_TRAINING_MEMORY_MB`)."""
    from avatar.settings import settings
    return settings().training_memory_mb


def node_resources(num_cpus: int | None = None) -> dict[str, float]:
    """The custom resources a node offers training: the memory budget and its CPUs."""
    return {TRAINING_MEMORY_RESOURCE: float(training_memory_mb()),
            TRAINING_CPU_RESOURCE: float(num_cpus or os.cpu_count() or 1)}


def job_memory_mb(cfg: Any) -> int:
    """Estimated peak memory of one job: driver and Train controller, plus each worker."""
    from avatar.settings import settings
    env = settings()
    return env.training_job_base_mb + cfg.num_workers * env.training_worker_mb


def job_resources(cfg: Any, cluster: dict[str, float]) -> dict[str, float]:
    """What the job's driver actor asks for: its share of the node budgets the cluster defines (none: ungated)."""
    wanted = {TRAINING_MEMORY_RESOURCE: float(job_memory_mb(cfg)),
              TRAINING_CPU_RESOURCE: float(cfg.num_workers * cfg.cpus_per_worker)}
    return {name: amount for name, amount in wanted.items() if name in cluster}


def exceeds_budget(cfg: Any, cluster: dict[str, float]) -> str | None:
    """Why a job bigger than the cluster's budget would stay queued forever (None when it fits)."""
    for name, amount in job_resources(cfg, cluster).items():
        if amount > cluster.get(name, 0.0) + 1e-9:
            return (f"the job needs {amount:g} {name} and the cluster offers {cluster[name]:g}; use fewer workers "
                    "or CPUs per worker")
    return None


# ---------------------------------------------------------------- what a job started, and stopping all of it
def descendants(root_actor_id: str) -> list[dict[str, Any]]:
    """Every actor the actor `root_actor_id` started, directly or through the actors it started (the Train
    controller, its workers, and unnamed detached helpers such as Train's placement-group cleaner), from the GCS
    actor table.

    Ray's public state API needs the dashboard, which the embedded service does not run, so this reads the GCS table
    through `ray._private.state` and follows owner addresses."""
    from ray._private import state
    table = state.actors()
    by_address = {(a["Address"]["IPAddress"], a["Address"]["Port"]): a for a in table.values()}
    children: dict[str, list[dict[str, Any]]] = {}
    for actor in table.values():
        if actor.get("Name") and actor.get("IsDetached"):
            continue   # a named detached actor is a shared service (Ray Data's autoscaling coordinator, the
            #            account turns), started by whichever job came first: not the job's own
        owner = by_address.get((actor["OwnerAddress"]["IPAddress"], actor["OwnerAddress"]["Port"]))
        if owner is not None and owner["ActorID"] != actor["ActorID"]:
            children.setdefault(owner["ActorID"], []).append(actor)
    found, todo = [], [root_actor_id]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child["ActorID"])
    return found


def alive(actor_ids: list[str]) -> list[str]:
    """The ids among `actor_ids` whose actors are not dead."""
    from ray._private import state
    table = state.actors()
    return [a for a in actor_ids if a in table and table[a]["State"] != "DEAD"]


def kill_processes(actors: list[dict[str, Any]]) -> None:
    """Stop actors no handle reaches (a detached helper started by an actor that is gone, e.g. Train's
    placement-group cleaner): a task on each one's node ends its process. Ray cannot kill an actor by id alone."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def stop(pid: int) -> None:
        import signal
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    refs = [stop.options(scheduling_strategy=NodeAffinitySchedulingStrategy(a["Address"]["NodeID"], soft=False))
            .remote(int(a["Pid"])) for a in actors if a.get("Pid")]
    ray.get(refs, timeout=30)


# ---------------------------------------------------------------- per-account turns
TURNS_ACTOR = "account-turns"


class AccountTurns:
    """Which jobs of each account hold a running turn, and in what order the others get one (a detached actor, one
    per cluster). Turns go in submission order: `enqueue` is called as a job is submitted, so a later job whose driver
    happens to start first still waits for the earlier one. A turn is taken atomically here, so two drivers of one
    account that get their budgets at the same moment cannot both start; drivers that died lose their turn and their
    place when the next one asks. The actor restarts empty: waiting drivers then line up in the order they ask."""

    def __init__(self, alive: Callable[[str, str], bool] | None = None) -> None:
        self.holders: dict[str, set[str]] = {}
        self.waiting: dict[str, list[str]] = {}
        self.alive = alive or _driver_alive

    def enqueue(self, account_id: str, job_id: str) -> None:
        line = self.waiting.setdefault(account_id, [])
        if job_id not in line and job_id not in self.holders.get(account_id, set()):
            line.append(job_id)

    def acquire(self, account_id: str, job_id: str, limit: int, namespace: str) -> bool:
        held = self.holders.setdefault(account_id, set())
        if job_id in held:
            return True
        self.enqueue(account_id, job_id)
        held.intersection_update({j for j in held if self.alive(j, namespace)})
        line = self.waiting[account_id]
        line[:] = [j for j in line if j == job_id or self.alive(j, namespace)]
        if len(held) < limit and line[0] == job_id:
            line.pop(0)
            held.add(job_id)
            return True
        return False

    def release(self, account_id: str, job_id: str) -> None:
        self.holders.get(account_id, set()).discard(job_id)
        line = self.waiting.get(account_id, [])
        if job_id in line:
            line.remove(job_id)


def _driver_alive(job_id: str, namespace: str) -> bool:
    import ray
    try:
        ray.get_actor(job_id, namespace=namespace)
        return True
    except ValueError:
        return False


def account_turns(namespace: str) -> Any:
    """The cluster's AccountTurns actor (created on first use)."""
    import ray
    return ray.remote(num_cpus=0, max_restarts=-1)(AccountTurns).options(
        name=TURNS_ACTOR, namespace=namespace, lifetime="detached", get_if_exists=True).remote()
