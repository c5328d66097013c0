"""Hostile clients against the real stack (local Ray, Serve's proxy with the guard, the CPU graph: the session's
app): chunked uploads cut at the cap, slow clients kept away, fast 503s past capacity, JSON answers from a dying
ingress, usage rows that survive a SIGKILL of the ingress replica, and Ray's ports behind token authentication."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

pytestmark = [pytest.mark.serve, pytest.mark.timeout(900)]

OPERATOR = {"authorization": "Bearer operator-secret"}


@pytest.fixture(scope="module")
def stack(serve_app):
    """The session's app (its proxy has the short header and body deadlines of tests/servers.py's RAY_ENV), with
    usage rows kept buffered and a small admission limit for this module."""
    with serve_app.configured({"AvatarIngress": {
            "usage_flush_interval_s": 3600,     # rows stay buffered: only the journal can save them from a SIGKILL
            "admission": {"max_running": 2, "max_waiting": 2, "max_wait_s": 30, "per_account": 6}}}):
        with serve_app.client() as client:
            client.port, client.data = serve_app.port, serve_app.data
            yield client


@pytest.fixture(scope="module")
def photo(astronaut) -> str:
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def _generate(stack, photo, **extra) -> httpx.Response:
    return stack.post("/v1/avatar/generate", json={"image": photo, "platform": "linkedin", **extra})


def _processes(title: str) -> list[psutil.Process]:
    """Live processes of this cluster's actors whose class name contains `title` (other clusters may run on the
    machine)."""
    from ray._private import state
    found = []
    for actor in state.actors().values():
        if title in actor["ActorClassName"] and actor["State"] == "ALIVE" and actor.get("Pid"):
            try:
                found.append(psutil.Process(int(actor["Pid"])))
            except psutil.NoSuchProcess:
                pass
    return found


# ---------------------------------------------------------------- 1: chunked uploads are cut at the cap
def test_a_chunked_upload_is_cut_at_the_cap_before_the_app(stack):
    proxy = _processes("ProxyActor")
    assert proxy, "the proxy process was not found"
    rss_before = sum(p.memory_info().rss for p in proxy)
    s = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    s.sendall(b"POST /v1/avatar/generate HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=b\r\n"
              b"transfer-encoding: chunked\r\n\r\n")
    piece = b"x" * 65536
    frame = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent = 0
    try:
        while sent < 300 * 2**20:
            s.sendall(frame)
            sent += len(piece)
    except (ConnectionError, TimeoutError):
        pass
    s.settimeout(10)
    answer = b""
    try:
        while chunk := s.recv(65536):
            answer += chunk
    except (ConnectionError, TimeoutError):
        pass
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "payload_too_large"
    assert sent < 21 * 2**20 + 8 * 2**20, f"{sent / 2**20:.0f} MiB were taken before the cut"
    growth = sum(p.memory_info().rss for p in proxy) - rss_before
    assert growth < 150 * 2**20, f"the proxy grew by {growth / 2**20:.0f} MiB"


def test_a_batch_upload_past_the_normal_cap_reaches_the_app(stack):
    """POST /v1/batches has its own allowance in the proxy (batches.max_upload_bytes): a 30 MiB multipart body gets
    the app's answer (here: no API key), not the proxy's 413 at the 21 MiB cap of every other route."""
    resp = stack.post("/v1/batches", content=b"x" * (30 * 2**20),
                      headers={"content-type": "multipart/form-data; boundary=b"})
    assert resp.status_code != 413 and resp.json()["error"]["code"] != "payload_too_large", resp.text
    assert resp.status_code in (400, 401), resp.text


# ---------------------------------------------------------------- 2: slow clients do not hold the service
def test_slow_clients_do_not_hold_the_service(stack, photo):
    stop, connected = threading.Event(), threading.Semaphore(0)

    def slow(head: bytes, drip: bytes) -> None:
        counted = False
        try:
            with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as s:
                s.sendall(head)
                counted = True
                connected.release()
                while not stop.wait(0.5):
                    s.sendall(drip)
        except OSError:
            if not counted:   # never leave the test waiting for a client that could not connect
                connected.release()

    body_head = b"POST /v1/avatar/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" \
                b"content-length: 1000000\r\n\r\n{\"image\": \""
    slow_ones = [threading.Thread(target=slow, args=(body_head, b"A"), daemon=True) for _ in range(40)]
    slow_ones += [threading.Thread(target=slow, args=(b"POST /v1/avatar/generate HTTP/1.1\r\n", b"x-a: b\r\n"),
                                   daemon=True) for _ in range(40)]
    for t in slow_ones:
        t.start()
    try:
        for _ in slow_ones:   # every slow client holds a connection before the normal request
            assert connected.acquire(timeout=30), "a slow client did not connect"
        started = time.monotonic()
        assert stack.get("/healthz").status_code == 200
        resp = _generate(stack, photo)
        assert resp.status_code == 200, resp.text
        assert time.monotonic() - started < 15, "a normal request waited behind slow clients"
    finally:
        stop.set()
        for t in slow_ones:
            t.join(10)


# ---------------------------------------------------------------- 7: past capacity, refusals are fast
def test_excess_load_is_refused_fast_and_accepted_requests_finish(stack, photo):
    def one(_):
        started = time.perf_counter()
        resp = _generate(stack, photo)
        return resp, time.perf_counter() - started
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    refused = [(r, s) for r, s in results if r.status_code == 503]
    accepted = [(r, s) for r, s in results if r.status_code == 200]
    assert len(accepted) >= 4 and len(refused) >= 8, [r.status_code for r, _ in results]
    assert len(accepted) + len(refused) == 16
    for resp, seconds in refused:
        assert resp.headers["retry-after"] and resp.json()["error"]["code"] == "overloaded"
        assert seconds < 1.0, f"a refusal took {seconds:.2f} s"
    assert max(s for _, s in accepted) < 60   # within the request deadline


# ---------------------------------------------------------------- 9: every answer is JSON
def test_hostile_requests_answer_json_through_the_real_stack(stack):
    deep = b"[" * 100_000 + b"]" * 100_000
    resp = stack.post("/v1/avatar/generate", content=deep, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    resp = stack.get("/v1/files/avatars/x.png", params={"expires": "\u00b2", "signature": "ab"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "invalid_signature"
    assert stack.head("/healthz").status_code == 200
    resp = stack.get("/v1/avatar/generate")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    assert stack.get("/v1/stats").status_code == 401
    assert stack.get("/v1/stats", headers=OPERATOR).status_code == 200


# ---------------------------------------------------------------- 4 and 9: a SIGKILL of the ingress
def _wait_ready(stack, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if stack.get("/v1/stats", headers=OPERATOR, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the ingress did not come back")


def _usage_ids(stack) -> list[str]:
    import pyarrow.dataset as ds
    root = stack.data / "usage"
    if not any(root.rglob("*.parquet")):
        return []
    return ds.dataset(str(root), format="parquet", partitioning="hive").to_table(columns=["request_id"]) \
        .column("request_id").to_pylist()


def _wait_until_the_ingress_holds_a_request(timeout_s: float = 30) -> None:
    """Serve's count of the requests the (single) ingress replica is handling reaches 1."""
    import ray
    [name] = [a for a in ray.util.list_named_actors(all_namespaces=True) if "AvatarIngress" in a["name"]]
    replica = ray.get_actor(name["name"], namespace=name["namespace"])
    deadline = time.monotonic() + timeout_s
    while ray.get(replica.get_num_ongoing_requests.remote(), timeout=30) < 1:
        assert time.monotonic() < deadline, "the request never reached the ingress replica"
        time.sleep(0.02)


def test_billing_rows_survive_a_sigkill_of_the_ingress(stack, photo):
    _wait_ready(stack)
    delivered = []
    for i in range(6):
        resp = _generate(stack, photo, style=["corporate_headshot", "anime_character"][i % 2])
        assert resp.status_code == 200, resp.text
        delivered.append(resp.json()["request_id"])
    refused = stack.post("/v1/avatar/generate", json={"image": base64.b64encode(b"not an image").decode()})
    assert refused.status_code == 415
    before = set(_usage_ids(stack))
    assert not set(delivered) <= before, "rows were flushed before the kill: the test would prove nothing"

    replicas = _processes("ServeReplica:avatar:AvatarIngress")
    assert len(replicas) == 1
    in_flight = ThreadPoolExecutor(1).submit(_generate, stack, photo)
    _wait_until_the_ingress_holds_a_request()
    os.kill(replicas[0].pid, signal.SIGKILL)
    answer = in_flight.result(timeout=120)
    # the request the dying replica held answers JSON with Retry-After, not a bare 500
    assert answer.headers["content-type"].startswith("application/json"), answer.text
    if answer.status_code != 200:
        assert answer.status_code == 503 and answer.headers.get("retry-after"), answer.text

    _wait_ready(stack)
    deadline = time.monotonic() + 60
    ids: list[str] = []
    while time.monotonic() < deadline:
        ids = _usage_ids(stack)
        if set(delivered) <= set(ids):
            break
        time.sleep(0.25)
    for request_id in delivered:
        assert ids.count(request_id) == 1, f"{request_id} is in the usage log {ids.count(request_id)} times"
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- 8: Ray's ports need the token
def test_ray_refuses_clients_without_the_token(stack):
    import ray
    gcs = ray.get_runtime_context().gcs_address
    from ray._raylet import AuthenticationMode, get_authentication_mode
    assert get_authentication_mode() == AuthenticationMode.TOKEN
    probe = "import ray; ray.init(address=%r, log_to_driver=False); print('CONNECTED')" % gcs
    for env in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        # A refused driver retries its GCS connection for ~20 s (one try a second); 3 tries are plenty for a GCS that
        # is up and answering: an accepted connection succeeds at the first.
        clean["RAY_gcs_server_port_wait_time_s"] = "3"
        result = subprocess.run([sys.executable, "-c", probe], env={**clean, **env}, capture_output=True, text=True,
                                timeout=120)
        assert "CONNECTED" not in result.stdout, env
    listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN
                 and c.laddr.port == int(gcs.rsplit(":", 1)[1])}
    assert listening, "the GCS port was not found"
