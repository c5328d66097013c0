"""The service on a two-node Ray cluster (one machine, `ray.cluster_utils.Cluster`): state shared through a real
PostgreSQL server and an S3 server, nothing through either node's disk.

Each node has its own data directory (`AVATAR_DATA_DIR` differs) and its own label: StyleApply and QualityGate
replicas prefer the `accelerator` node and fall back to the `general` (head) node; the ingress has a replica on each
node. The tests show that generate crosses nodes, that a URL signed by one ingress replica is served by the other,
that an API key made on one node works through both replicas, that a style published on the head (as a training job
publishes it) is applied by a StyleApply replica on the worker, that the usage log holds each delivered avatar once,
and that after the worker node dies the stages come back on the head and requests complete."""

from __future__ import annotations

import base64
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from servers import forget_serve_handles, free_port

pytestmark = [pytest.mark.slow, pytest.mark.serve, pytest.mark.own_ray, pytest.mark.timeout(1200)]

HEAD, WORKER = {"avatar-role": "general"}, {"avatar-role": "accelerator"}
ON_WORKER_FIRST = {"label_selector": WORKER, "fallback_strategy": [{"label_selector": HEAD}]}
SECRETS = {"AVATAR_SIGNING_SECRET": "one signing key for every node", "AVATAR_ACCOUNT_PEPPER": "one pepper",
           "AVATAR_OPERATOR_KEY": "operator-key"}
OPERATOR = {"Authorization": "Bearer operator-key"}


def cluster_options() -> dict[str, dict]:
    """serve_config.yaml's deployments (CPU profile), one replica each, the ingress on both nodes, StyleApply and
    QualityGate on the accelerator node first."""
    from service.config import app_config, apply_cpu_profile, deployment_options, load_config
    app = app_config(apply_cpu_profile(load_config(), cpus_per_replica=0.1))
    options = deployment_options(app, overrides={
        "AvatarIngress": {"usage_flush_interval_s": 0, "accounts": {"credits": True}},
        "JobRunner": {"usage_flush_interval_s": 0, "lease_s": 8, "renew_every_s": 1, "max_concurrency": 2}})
    for name, opts in options.items():
        opts.pop("autoscaling_config", None)
        opts["num_replicas"] = 1
    options["AvatarIngress"].update(num_replicas=2, max_replicas_per_node=1)
    options["JobRunner"].update(num_replicas=2, max_replicas_per_node=1)
    for name in ("StyleApply", "QualityGate"):
        options[name]["ray_actor_options"].update(ON_WORKER_FIRST)
    return options


@pytest.fixture(scope="module")
def cluster(postgres, s3_server):
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from graph import build_app
    assert not ray.is_initialized(), "the session's local Ray is up: this module must run before it starts (conftest)"
    bucket = s3_server.new_bucket()
    database = postgres.new_database()
    roots = [Path(tempfile.mkdtemp(prefix=f"node{i}-")) for i in (1, 2)]
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")   # short: Unix socket paths must stay under 107 bytes
    os.makedirs(f"{temp}/ray")                           # RAY_TMPDIR: this cluster's address file, not /tmp/ray's
    env = {"RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": temp,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",   # every node on 127.0.0.1: no Ray port on the network
           "AVATAR_DATABASE_URL": database,
           "AVATAR_STORAGE_URI": s3_server.uri(bucket, "storage"), "AVATAR_USAGE_URI": s3_server.uri(bucket, "usage"),
           "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",   # the head's proxy spreads over both ingress replicas
           **SECRETS}
    with ray_auth_mode_refreshed(), pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("AVATAR_DATA_DIR", raising=False)
        refresh_ray_auth_mode()
        node = dict(num_cpus=2, object_store_memory=200 * 2**20)
        c = Cluster()
        try:
            c, worker = start_nodes(node, roots, temp)
            ray.init(address=c.address, log_to_driver=False)
            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # tasks below: workers lack tests/
            port = free_port()
            serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(cluster_options()), name="avatar", route_prefix="/")
            nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
            head_id = next(i for i, n in nodes.items() if n["Labels"].get("avatar-role") == "general")
            worker_id = next(i for i, n in nodes.items() if n["Labels"].get("avatar-role") == "accelerator")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=180) as client:
                yield {"cluster": c, "worker": worker, "client": client, "head_id": head_id, "worker_id": worker_id,
                       "roots": roots, "database": database, "usage_uri": env["AVATAR_USAGE_URI"],
                       "storage_uri": env["AVATAR_STORAGE_URI"], "delivered": []}
        finally:
            forget_serve_handles()
            ray.shutdown()   # no serve.shutdown(): its graceful replica stops only delay c.shutdown(), which kills all
            c.shutdown()
            for path in (*roots, Path(temp)):
                shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------ helpers
def refresh_ray_auth_mode() -> None:
    """Ray reads RAY_AUTH_MODE into a per-process cache on its first start; this module's cluster runs with the mode
    the environment says now, and the local Rays of later test modules with theirs (else a driver without a token
    waits forever on a GCS that wants one)."""
    from ray._raylet import AuthenticationTokenLoader, Config
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def ray_auth_mode_refreshed() -> Iterator[None]:
    """Refresh Ray's cached auth mode on the way out, after the environment has been restored."""
    try:
        yield
    finally:
        refresh_ray_auth_mode()


def start_nodes(node: dict, roots: list[Path], temp: str, tries: int = 3):
    """The head and the worker. Ray gives a raylet 30 s (fixed) to register; on a loaded machine that can pass, so a
    failed start is torn down and tried again."""
    from ray.cluster_utils import Cluster
    for attempt in range(tries):
        c = Cluster()
        try:
            c.add_node(**node, labels=HEAD, include_dashboard=False, temp_dir=temp,
                       env_vars={"AVATAR_DATA_DIR": str(roots[0])})   # the first node is the head
            return c, c.add_node(**node, labels=WORKER, env_vars={"AVATAR_DATA_DIR": str(roots[1])})
        except Exception:
            c.shutdown()
            if attempt == tries - 1:
                raise


def on_node(labels: dict[str, str], fn, *args):
    """Run `fn(*args)` in a task on the node with `labels` (that node's environment and data directory)."""
    import ray
    task = ray.remote(num_cpus=0, label_selector=labels)(_located)
    return ray.get(task.remote(fn, *args), timeout=600)


def _located(fn, *args):
    import ray
    return ray.get_runtime_context().get_node_id(), fn(*args)


def _create_account(name: str, credits: int) -> tuple[str, str, str]:
    from avatar.settings import settings
    from avatar.store.accounts import open_account_store
    from avatar.store.credits import Ledger
    from avatar.store.database import open_database
    env = settings()
    account, key = open_account_store().create_account(name)
    Ledger(open_database(env.resolved_database_url)).grant(account, credits, "test")
    return account, key, str(env.data_path)


def _publish_style(account: str) -> str:
    """A graded token saved and registered on this node as a finished training job publishes it (the shared storage
    and database are the point here; the fit itself is test_training's and test_styles_service's)."""
    from avatar.settings import settings
    from avatar.store.accounts import open_account_store
    from avatar.store.storage import Storage
    from avatar.tokens import StyleToken, build_manifest, examples_fingerprint, new_token_id, save_token
    from training.model import LutStyleModel
    from training.train_style import BASE_ENGINE
    import torch
    model = LutStyleModel(lut_size=9, curve_knots=8)
    with torch.no_grad():
        model.lut_residual[0] += 0.1 * model.identity[2] ** 2     # warmer where blue is high
    lut, curve = model.bake()
    manifest = build_manifest(new_token_id(), account, base_engine=BASE_ENGINE, base_style="corporate_headshot",
                              fingerprint=examples_fingerprint(["a"]), example_count=50, metrics={"loss": 0.1},
                              lut_size=9, curve_knots=8)
    token = StyleToken(manifest["token_id"], account, lut, curve, {"base_style": "corporate_headshot"}, manifest)
    save_token(Storage(settings().resolved_storage_uri), token)
    open_account_store().register_style(account, token.token_id, token.manifest)
    return token.token_id


def stats(client: httpx.Client, seen: int = 2, tries: int = 40) -> dict[str, dict]:
    """Each ingress replica's /v1/stats, by replica: asks until `seen` replicas answered."""
    found: dict[str, dict] = {}
    for _ in range(tries):
        response = client.get("/v1/stats", headers=OPERATOR)
        assert response.status_code == 200, response.text
        body = response.json()
        found[body["replica"]["replica"]] = body
        if len(found) >= seen:
            break
    return found


def count(summary: dict, name: str) -> int:
    return summary["counts"].get(name, 0)


def runners(seen: int = 2, tries: int = 40) -> dict[str, dict]:
    """Each JobRunner replica's stats, by owner: asks until `seen` replicas answered."""
    from ray import serve
    handle, found = serve.get_deployment_handle("JobRunner", "avatar"), {}
    for _ in range(tries):
        stats = handle.stats.remote().result(timeout_s=60)
        found[stats["owner"]] = stats
        if len(found) >= seen:
            break
    return found


def in_flight_on(node_id: str, timeout_s: float = 120) -> None:
    """Wait until the JobRunner replica on `node_id` has batch items in flight."""
    deadline = time.monotonic() + timeout_s
    while not any(r["node_id"] == node_id and r["inflight"] for r in runners().values()):
        assert time.monotonic() < deadline, f"no batch item in flight on node {node_id} after {timeout_s:g} s"
        time.sleep(0.1)


def batch(client: httpx.Client, key: str, astronaut, n: int) -> dict:
    items = [{"external_id": f"emp-{i:03d}", "image": photo(astronaut)} for i in range(n)]
    response = client.post("/v1/batches", json={"items": items, "platform": "slack"},
                           headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 202, response.text
    return response.json()


def finished(client: httpx.Client, key: str, job: dict, timeout_s: float = 600) -> tuple[dict, list[dict]]:
    headers, deadline = {"Authorization": f"Bearer {key}"}, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(job["status_url"], headers=headers).json()
        if status["state"] in ("succeeded", "failed", "canceled"):
            return status, client.get(f"{job['status_url']}/items", headers=headers).json()["items"]
        time.sleep(0.5)   # the account's plan refills 2 requests a second
    pytest.fail(f"batch {job['job_id']} did not finish in {timeout_s} s")


def photo(astronaut) -> str:
    buf = io.BytesIO()
    Image.fromarray(astronaut).resize((400, 400)).save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def where(name: str) -> str:
    from ray import serve
    return serve.get_deployment_handle(name, "avatar").where.remote().result(timeout_s=120)["node_id"]


# ------------------------------------------------------------------------------------------ the proofs
def test_replicas_are_placed_on_both_nodes(cluster):
    assert where("StyleApply") == where("QualityGate") == cluster["worker_id"]
    ingress_nodes = {s["replica"]["node_id"] for s in stats(cluster["client"]).values()}
    assert ingress_nodes == {cluster["head_id"], cluster["worker_id"]}


def test_an_api_key_made_on_one_node_works_through_both_replicas(cluster, astronaut):
    """The account is created by a task on the worker node (its own data directory): both ingress replicas accept
    its key, because keys and the pepper live in PostgreSQL and the settings, not on a node."""
    node, (account, key, data_dir) = on_node(WORKER, _create_account, "Acme", 100)
    assert node == cluster["worker_id"] and data_dir == str(cluster["roots"][1])
    cluster.update(account=account, key=key)
    client, headers = cluster["client"], {"Authorization": f"Bearer {key}"}
    before = stats(client)
    served: set[str] = set()
    for _ in range(30):
        response = client.post("/v1/avatar/check", json={"image": photo(astronaut)}, headers=headers)
        assert response.status_code == 200, response.text
        after = stats(client)
        served = {r for r in after if count(after[r], "check") > count(before.get(r, {"counts": {}}), "check")}
        if len(served) == 2:
            break
    assert len(served) == 2, "every check landed on one replica"


def test_generate_crosses_nodes_and_the_other_replica_serves_its_url(cluster, astronaut):
    client, headers = cluster["client"], {"Authorization": f"Bearer {cluster['key']}"}
    before = stats(client)
    response = client.post("/v1/avatar/generate", json={"image": photo(astronaut), "style": "anime_character"},
                           headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    cluster["delivered"].append(body["request_id"])
    assert response.headers["X-Credits-Charged"] == "1" and response.headers["X-Credits-Remaining"] == "99"
    after = stats(client)
    issuer = next(r for r in after if count(after[r], "generate") > count(before.get(r, {"counts": {}}), "generate"))
    other = next(r for r in after if r != issuer)
    files_before = count(after[other], "files")
    for _ in range(30):
        png = client.get(body["avatar_url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        if count(stats(client)[other], "files") > files_before:
            break
    else:
        pytest.fail("the other ingress replica never served the signed URL")
    assert Image.open(io.BytesIO(png.content)).size == (800, 800)


def test_a_style_published_on_the_head_is_applied_on_the_worker(cluster, astronaut):
    node, token = on_node(HEAD, _publish_style, cluster["account"])
    assert node == cluster["head_id"]
    response = cluster["client"].post("/v1/avatar/generate", json={"image": photo(astronaut), "style": token},
                                      headers={"Authorization": f"Bearer {cluster['key']}"})
    assert response.status_code == 200, response.text
    cluster["delivered"].append(response.json()["request_id"])
    assert response.headers["X-Credits-Charged"] == "2"                 # a custom style costs more
    from ray import serve
    loads = serve.get_deployment_handle("StyleApply", "avatar").token_stats.remote().result(timeout_s=60)["loads"]
    assert f"{cluster['account']}/{token}" in loads and where("StyleApply") == cluster["worker_id"]


def test_a_batch_spreads_over_both_nodes(cluster, astronaut):
    job = batch(cluster["client"], cluster["key"], astronaut, 6)
    status, items = finished(cluster["client"], cluster["key"], job)
    assert status["state"] == "succeeded" and [i["state"] for i in items] == ["succeeded"] * 6
    cluster["delivered"] += [i["result"]["request_id"] for i in items]
    done = runners()
    assert {r["node_id"] for r in done.values()} == {cluster["head_id"], cluster["worker_id"]}
    assert all(r["completed"] >= 1 for r in done.values()), done       # each node's runner ran some items


def test_the_usage_log_holds_each_delivered_avatar_once(cluster):
    from avatar.store.usage import read_usage
    rows = read_usage(cluster["usage_uri"], account=cluster["account"], outcome="delivered").to_pylist()
    ids = [r["request_id"] for r in rows]
    assert sorted(ids) == sorted(cluster["delivered"])
    assert sorted(r["credits"] for r in rows) == [1] * 7 + [2]          # a custom style costs 2
    for root in cluster["roots"]:                                        # nothing reached a node's own disk
        assert not (root / "usage").exists() and not (root / "storage").exists()
        assert not list(root.glob("*.sqlite3")) and not (root / "signing.key").exists()


def test_after_the_worker_node_dies_the_stages_come_back_on_the_head(cluster, astronaut):
    """The worker dies while a batch and requests are in flight: each request answers (a JSON 5xx for those it cut
    off, never a hang); the stages come back on the head; the head's runner takes over the dead runner's items and
    every item completes once; every delivered avatar is charged and logged once, and no refused or cut-off request
    keeps a charge (holds of requests whose ingress replica died are given back by the sweep)."""
    import threading

    from avatar.store.credits import HELD, Ledger
    from avatar.store.database import open_database
    from avatar.store.usage import read_usage
    ledger = Ledger(open_database(cluster["database"]))
    client, headers = cluster["client"], {"Authorization": f"Bearer {cluster['key']}"}
    balance_before = ledger.balance(cluster["account"])
    answers: list[httpx.Response] = []

    def send(n: int) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=180) as own:
            for _ in range(n):
                answers.append(own.post("/v1/avatar/generate", json={"image": photo(astronaut)}, headers=headers))
    job = batch(client, cluster["key"], astronaut, 6)                    # a batch in flight on both runners
    senders = [threading.Thread(target=send, args=(2,)) for _ in range(3)]
    for t in senders:
        t.start()
    in_flight_on(cluster["worker_id"])
    cluster["cluster"].remove_node(cluster["worker"])
    for t in senders:
        t.join(timeout=600)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        answers.append(client.post("/v1/avatar/generate", json={"image": photo(astronaut)}, headers=headers))
        if answers[-1].status_code == 200:
            break
        time.sleep(0.5)   # within the account's 2 requests a second
    assert answers[-1].status_code == 200
    assert all(a.status_code in (200, 500, 503, 504) for a in answers), [a.text for a in answers]
    assert where("StyleApply") == where("QualityGate") == cluster["head_id"]

    status, items = finished(client, cluster["key"], job)                # the head's runner takes over
    assert status["state"] == "succeeded" and [i["state"] for i in items] == ["succeeded"] * 6
    delivered = [a.json()["request_id"] for a in answers if a.status_code == 200]
    delivered += [i["result"]["request_id"] for i in items]
    cut_off = [a for a in answers if a.status_code != 200]
    assert all(a.headers.get("X-Credits-Charged", "0") == "0" for a in cut_off)
    ledger.release_stale(max_age_s=0)          # what the sweep does for holds whose ingress replica died
    assert ledger.balance(cluster["account"]) == balance_before - len(delivered)
    with ledger.db.transaction(write=False) as tx:
        charged = tx.execute("SELECT request_id FROM avatars WHERE account_id=? AND charged > 0 AND created_at > ?",
                             (cluster["account"], time.time() - 3600)).fetchall()
        assert tx.execute("SELECT COUNT(*) FROM avatars WHERE state=?", (HELD,)).fetchone()[0] == 0
    assert set(delivered) <= {r for (r,) in charged}
    rows = read_usage(cluster["usage_uri"], account=cluster["account"], outcome="delivered").to_pylist()
    logged = [r["request_id"] for r in rows]
    for request_id in [*cluster["delivered"], *delivered]:
        assert logged.count(request_id) == 1, request_id
