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

# No test reaches the network: Ray would otherwise send usage statistics from every cluster it starts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One Ray for the whole test session (ray.init costs ~5 s), with one logical GPU for packing tests."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# The studies past the report: test_run.py runs each for one smoke epoch (beyond_the_report), so the
# every-study start in test_dry_run.py leaves them out.
BEYOND = ["schedules", "smoothing", "mixup_alpha", "cutmix", "dropout", "depth", "models"]


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


@pytest.fixture(scope="session")
def smoke_kept(ray_session, tmp_path_factory):
    """`wd` on the smoke data, 2 epochs: 2 plain trials whose final weights are kept. (experiment folder, exit
    code, stdout)"""
    storage = tmp_path_factory.mktemp("smoke-kept")
    code, out = run_cli("wd", "--smoke", "--epochs", "2", "--gpus-per-trial", "0", "--storage-path", storage)
    return storage / "wd", code, out


@pytest.fixture(scope="session")
def smoke_fused(ray_session, tmp_path_factory):
    """`wd` on the smoke data, 1 epoch, its 2 configurations fused into one trial. (experiment folder, exit code,
    stdout)"""
    storage = tmp_path_factory.mktemp("smoke-fused")
    code, out = run_cli("wd", "--smoke", "--epochs", "1", "--fuse", "2", "--gpus-per-trial", "0",
                        "--storage-path", storage)
    return storage / "wd", code, out


SMOKE_DATA_ARGS = ("--train", "1000", "--test", "200", "--classes", "40", "--noise", "30", "--label-noise", "0.2")


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """The --smoke data written again by its documented command (what `train --from` asks for)."""
    from tune_cifar.data import main

    folder = tmp_path_factory.mktemp("smoke-data")
    assert main(["synthetic", "--out", str(folder), *SMOKE_DATA_ARGS]) == 0
    return folder


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
                    "RAY_AUTH_MODE": "token",  # the job client then sends ~/.ray/auth_token
                    # Tune saves its experiment state at most every 10 s by default: a 2-epoch smoke trial can end
                    # and the next end inside one period, so a kill_when() waiting for "one ended, one not" in the
                    # saved state saw both end at once on CI; drivers here save it every second
                    "TUNE_GLOBAL_CHECKPOINT_S": "1"}

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


@contextlib.contextmanager
def moto_server(log_dir: Path, **env: str):
    """An S3-compatible server on loopback (moto's standalone server, a dev dependency): its endpoint URL.
    `env` goes to the server (INITIAL_NO_AUTH_ACTION_COUNT="0": requests must be signed)."""
    boto3 = pytest.importorskip("boto3", reason="boto3 is a dev dependency (pip install -e '.[dev]')")
    exe = Path(sys.executable).with_name("moto_server")
    exe = str(exe) if exe.exists() else shutil.which("moto_server")
    if exe is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]', part of the dev extra)")
    port = free_port()
    with open(log_dir / f"moto-{port}.log", "w") as log:
        server = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **env})
        try:
            endpoint = f"http://127.0.0.1:{port}"
            deadline = time.time() + 30
            while True:
                try:  # any answer, even "access denied", means it listens
                    boto3.client("s3", endpoint_url=endpoint, **S3_KEYS).list_buckets()
                    break
                except Exception as e:
                    if "AccessDenied" in str(e) or "InvalidAccessKeyId" in str(e):
                        break
                    if server.poll() is not None or time.time() > deadline:
                        pytest.skip(f"moto_server did not start on {endpoint}: {e}")
                    time.sleep(0.2)
            yield endpoint
        finally:
            server.kill()
            server.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


# Dummy credentials: moto accepts any; they only have to be there.
S3_KEYS = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


class Bucket:
    """A fresh bucket on the test server; `env` is what a process needs to reach it (AWS_ENDPOINT_URL and keys)."""

    def __init__(self, endpoint: str, name: str):
        import boto3

        self.endpoint, self.name, self.uri = endpoint, name, f"s3://{name}"
        self.env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
        self.client = boto3.client("s3", endpoint_url=endpoint, **S3_KEYS)
        self.client.create_bucket(Bucket=name)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def download(self, prefix: str, dest: Path, only: str = "") -> None:
        """Every object under `prefix` (whose name contains `only`) into `dest`, as files."""
        for key in self.keys(prefix):
            if not key.endswith("/") and only in key.rsplit("/", 1)[-1]:  # (keys ending in / are folder markers)
                target = dest / key[len(prefix):].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.read(key))


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request):
    """A bucket of this test's own, and this process's environment pointed at the server."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    bucket = Bucket(s3_server, f"{name}-{os.getpid()}")
    for key, value in bucket.env.items():
        monkeypatch.setenv(key, value)
    return bucket


def assert_lr_statuses(df) -> None:
    """Every trial of an `lr --smoke` run finished, but lr 0.5, which may also end `diverged`: on the smoke data
    its last validation loss can be above 46 nats (713 after 3 epochs once), the ranking rule's divergence,
    though it trains every epoch all the same."""
    status = df.groupby("config/lr")["status"].last()
    assert set(status.drop(0.5, errors="ignore")) == {"finished"}, status.to_dict()
    assert status.get(0.5, "finished") in {"finished", "diverged"}, status.to_dict()
