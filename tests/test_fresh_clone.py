"""What a newcomer does: a copy of the repository at a path of its own (whose parent holds no serve_config.yaml), its
own virtual environment from `make install`, then the README's `make run`, `make bench` and the `avatar` console script
from another directory, with the project's defaults (no --config, no fixture app).

Each run gets a free port and a private, short Ray temp dir (`RAY_TMPDIR`), and carries a marker in its environment that
every process it starts (make, the driver, GCS, raylet, workers, replicas) inherits: the test finds exactly its own
processes, so another developer's Ray on the same machine is neither disturbed nor mistaken for a leftover.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MARKER = "AVATAR_TEST_FRESH_CLONE_RUN"
QUICK_BENCH = "--requests 1 --sizes standard --styles corporate_headshot --concurrency 1"
OLD_BENCH_PORT = 8123   # where bench/latency.py used to serve, whoever else held it


# ------------------------------------------------------------------------------------------------ the copy
@pytest.fixture(scope="module")
def checkout() -> Iterator[Path]:
    """The working tree's files (tracked, and new ones git does not ignore) copied to /tmp/fcXXXX/repo, with a
    virtual environment built there by `make install` (from uv's cache when it has every package; ~40 s, most of
    it compiling the bytecode)."""
    base = Path(tempfile.mkdtemp(prefix="fc", dir="/tmp"))   # short: Ray's socket paths live under it
    repo = base / "repo"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout
    for name in filter(None, listed.split(b"\0")):
        source = ROOT / os.fsdecode(name)
        if source.is_file():   # a tracked file deleted in the working tree is not part of it
            target = repo / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    assert not (base / "serve_config.yaml").exists()
    env = clean_env(base)
    install = make(repo, ["install"], {**env, "UV_OFFLINE": "1"}, timeout=300)
    if install.returncode != 0:   # uv's cache lacks a package: fetch it, as a newcomer's first install does
        install = make(repo, ["install"], env, timeout=600)
    assert install.returncode == 0, install.stdout[-4000:]
    try:
        yield repo
    finally:
        shutil.rmtree(base, ignore_errors=True)


def clean_env(base: Path, **extra: str) -> dict[str, str]:
    """The environment of a newcomer's shell: none of this test session's Ray, avatar or Python path settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "AVATAR_", "PYTEST_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(COLUMNS="400", **extra)   # COLUMNS: argparse's help on one line
    return env


def make(repo: Path, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(repo), *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def make_group(repo: Path, args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """`make` in a process group of its own: past the timeout the whole group is stopped (Ctrl-C, then SIGKILL), so
    nothing it started outlives the test."""
    proc = subprocess.Popen(["make", "-C", str(repo), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        out, _ = proc.communicate()
        pytest.fail(f"`make {' '.join(args)}` ran past {timeout:.0f} s:\n{out[-4000:]}")
    return proc.returncode, out


def stop_group(proc: subprocess.Popen, within_s: float = 120.0) -> None:
    """Ctrl-C in the terminal (SIGINT to the whole foreground group), then SIGKILL if it is still there."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------- its processes
def processes_of(run: str) -> list[psutil.Process]:
    """Every live process whose environment carries this run's marker."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == run and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def assert_all_gone(run: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    left = processes_of(run)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = processes_of(run)
    names = []
    for proc in left:
        try:
            names.append(f"{proc.pid} {proc.name()} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            continue
    assert not names, "processes of the run are still alive:\n" + "\n".join(names)


def replica_files(run: str) -> dict[int, set[str]]:
    """Mapped files (shared libraries) of each Serve replica process of the run."""
    out: dict[int, set[str]] = {}
    for proc in processes_of(run):
        try:
            if "ServeReplica" in " ".join(proc.cmdline()):
                out[proc.pid] = {m.path for m in proc.memory_maps()}
        except psutil.Error:
            continue
    return out


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# ------------------------------------------------------------------------------------------------ helpers
def astronaut_jpeg() -> bytes:
    from skimage import data
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, within_s: float = 300.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`make run` exited ({proc.returncode}) before serving:\n{tail(log)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"`make run` did not answer /healthz within {within_s:.0f} s:\n{tail(log)}")


# -------------------------------------------------------------------------------------------------- tests
@pytest.mark.serve
def test_make_install_writes_the_bytecode_every_process_starts_from(checkout):
    """A deploy starts a dozen Python processes (replicas, controller, proxy, Ray's agents); each imports Ray, torch
    and the rest from the .pyc files `make install` wrote. Without them every process compiles what it imports from
    source, at every start where PYTHONDONTWRITEBYTECODE is set. Runs before anything here imports from the copy."""
    site = next((checkout / ".venv" / "lib").glob("python3*/site-packages"))
    for package in ("ray", "ray/serve", "torch", "fastapi", "pydantic", "diffusers"):
        assert list((site / package / "__pycache__").glob("*.pyc")), f"no bytecode for {package} in {site}"


@pytest.mark.timeout(900)
def test_make_run_serves_from_a_fresh_copy_and_ctrl_c_leaves_nothing(checkout):
    code = subprocess.run([str(checkout / ".venv/bin/python"), "-c",
                           "import avatar, cli, service; print(cli.__file__, service.__file__, avatar.__file__)"],
                          cwd=checkout, env=clean_env(checkout.parent), capture_output=True, text=True, check=True)
    assert all(path.startswith(str(checkout) + "/") for path in code.stdout.split()), code.stdout
    run, port = uuid.uuid4().hex, free_port()
    ray_tmp = checkout.parent / "r"   # private and short, so Ray's socket paths stay under 107 bytes
    ray_tmp.mkdir()
    log = checkout.parent / "make-run.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "-C", str(checkout), "run", f"PORT={port}"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=clean_env(checkout.parent, RAY_TMPDIR=str(ray_tmp), **{MARKER: run}))
    try:
        wait_healthy(proc, url, log)
        photo = base64.b64encode(astronaut_jpeg()).decode()
        answer = httpx.post(f"{url}/v1/avatar/generate", json={"image": photo, "platform": "linkedin"}, timeout=120)
        assert answer.status_code == 200, answer.text
        png = httpx.get(answer.json()["avatar_url"], timeout=30)
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (800, 800)
        replicas = replica_files(run)
        assert replicas, "no Serve replica of this run was found"
        venv = str(checkout / ".venv") + "/"
        for pid, files in replicas.items():   # the copy's environment, whose packages are the copy's own
            assert any(f.startswith(venv) for f in files), f"replica {pid} does not run in {venv}"
            assert not any(f.startswith(str(ROOT) + "/") for f in files), f"replica {pid} loads files of {ROOT}"
    finally:
        stop_group(proc)
    assert "shutting down" in tail(log), tail(log)
    assert_all_gone(run)


@pytest.mark.serve
@pytest.mark.timeout(900)
def test_make_bench_runs_from_a_fresh_copy_beside_a_service_on_its_old_port(checkout):
    """`make bench` starts its own service on a free port (another run may hold any fixed one: here its old port is
    taken, bound but refusing connections), measures, and stops everything it started."""
    run = uuid.uuid4().hex
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", OLD_BENCH_PORT))
        except OSError:   # someone else holds it already: the same situation
            pass
        code, out = make_group(checkout, ["bench", f"BENCH_ARGS={QUICK_BENCH}"],
                               clean_env(checkout.parent, **{MARKER: run}), timeout=600)
    assert code == 0, out[-4000:]
    rows = [line.split() for line in out.splitlines() if line.startswith("corporate_headshot")]
    assert rows and rows[0][1] == "800" and float(rows[0][2]) > 0, out[-2000:]
    assert "throughput:" in out and "Serve processes" in out
    assert_all_gone(run)


@pytest.mark.serve
@pytest.mark.timeout(900)
def test_the_console_script_works_from_another_directory(checkout):
    elsewhere = checkout.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "me.jpg").write_bytes(astronaut_jpeg())
    avatar = str(checkout / ".venv/bin/avatar")
    env = clean_env(checkout.parent)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([avatar, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    listed = run("models", "list")
    assert listed.returncode == 0 and "cached" in listed.stdout, listed.stderr[-2000:]
    made = run("generate", "me.jpg", "--platform", "linkedin", "-o", "avatar.png")
    assert made.returncode == 0, made.stderr[-2000:]
    assert Image.open(elsewhere / "avatar.png").size == (800, 800)
    helped = run("serve", "--help")
    assert helped.returncode == 0 and f"{checkout / 'serve_config.yaml'})" in helped.stdout, helped.stdout


def test_default_paths_are_the_repositorys_whatever_the_working_directory(tmp_path, monkeypatch):
    """The serve config and the diffusion recipe book default to files of this repository, found from the code."""
    import cli
    from avatar.engines.diffusion.recipes import load_recipes
    from training.train_diffusion_style import DiffusionTrainConfig
    monkeypatch.chdir(tmp_path)
    assert Path(cli.build_parser().parse_args(["serve"]).config) == ROOT / "serve_config.yaml"
    assert Path(DiffusionTrainConfig.recipes).resolve() == ROOT / "configs" / "diffusion.yaml"
    assert load_recipes(DiffusionTrainConfig.recipes).recipes
    missing = cli.main(["serve", "--config", str(tmp_path / "nope.yaml")])
    assert missing == 2
