import contextlib
import io
import os
import shutil
import socket
import signal
import subprocess
import sys
import tempfile
import time

from pathlib import Path

import pytest

from analysis.loading import tune_statuses  # noqa: F401 (tests import it from here)

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One Ray for the whole test session (ray.init costs ~5 s), with one logical GPU for packing tests."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def run_cli(*argv):
    """python -m tune_cifar.run in this process (sharing the session's Ray); (exit code, stdout)."""
    from tune_cifar.run import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


@pytest.fixture(scope="session")
def smoke_all(ray_session, tmp_path_factory):
    """The `all` chain of smoke studies, run once and shared: (storage path, exit code, stdout)."""
    storage = tmp_path_factory.mktemp("smoke-all")
    code, out = run_cli("all", "--smoke", "--storage-path", storage, "--gpus-per-trial", "0")
    return storage, code, out


@pytest.fixture(scope="session")
def smoke_packed(ray_session, tmp_path_factory):
    """`lrs` with 2 seeds: 4 trials of 0.25 GPU and 0.5 CPU each, which fit on the one logical GPU at once."""
    storage = tmp_path_factory.mktemp("smoke-packed")
    code, out = run_cli("lrs", "--smoke", "--epochs", "2", "--seeds", "2", "--gpus-per-trial", "0.25", "--cpus-per-trial", "0.5",
                        "--storage-path", storage)
    return storage, code, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")  # the venv's own CLI, even when the venv is not activated
    path = str(beside) if beside.exists() else shutil.which("ray")
    if path is None:
        pytest.skip("the `ray` command is not on PATH")
    return path


class IsolatedRay:
    """Ray processes started under their own RAY_TMPDIR, so a test can kill exactly those.

    `ray stop` would also stop the session's Ray; a killed driver leaves agents and idle workers
    behind that carry no temp dir on their command line, but do carry RAY_TMPDIR in their environment.
    """

    def __init__(self, root):
        self.tmpdir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are length-limited
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` = this venv's
        self.env = {**os.environ, "PATH": path, "RAY_TMPDIR": self.tmpdir, "RAY_ADDRESS": "", "RAY_DEDUP_LOGS": "0",
                    "RAY_AUTH_MODE": "token"}  # the job client then sends ~/.ray/auth_token

    def kill(self):
        marker = f"RAY_TMPDIR={self.tmpdir}".encode()
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                pid = int(environ.parent.name)
                if pid != os.getpid() and marker in environ.read_bytes().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass  # gone already, or not ours to read
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture
def isolated_ray(tmp_path):
    ray = IsolatedRay(tmp_path)
    yield ray
    ray.kill()


def run_checked(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def kill_when(driver: subprocess.Popen, ready, what: str, timeout_s: float = 300):
    """SIGKILL `driver` as soon as ready() returns something truthy (polled every 0.2 s), and return that.

    ready() should read Tune's saved experiment state (tune_statuses), which is what a resume restores
    from, so a test's assertions about what resume reruns depend on that state and not on timing.
    """
    deadline = time.time() + timeout_s
    value = None
    try:
        while time.time() < deadline and driver.poll() is None and not value:
            value = ready()
            if not value:
                time.sleep(0.2)
        assert value, f"{what} before the deadline (driver exit code {driver.poll()})"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
    return value
