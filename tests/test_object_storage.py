"""Studies on an S3-compatible server (moto's, on loopback): every file in the bucket, none on the driver's
disk, a SIGKILLed driver resumed from another working folder, the report read from the bucket, and storage
errors as one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import free_port, kill_when, moto_server, tune_statuses

pytestmark = pytest.mark.slow

STUDY = ["lrs", "--smoke", "--epochs", "2", "--gpus-per-trial", "0"]  # 2 trials of 2 epochs


def _cli(*argv):
    return [sys.executable, "-m", "tune_cifar.run", *argv]


def _saved_statuses(bucket, prefix: str, scratch: Path) -> dict[str, str]:
    """Tune's saved trial statuses, read from the bucket (what a resume restores from)."""
    bucket.download(f"{prefix}/", scratch / "state", only="experiment_state-")
    return tune_statuses(scratch / "state")


@pytest.fixture(scope="module")
def killed_and_resumed(s3_server, tmp_path_factory):
    """`lrs` on s3://<bucket>, one trial at a time, the driver SIGKILLed once a trial has ended and the other
    has not, then `--resume` run from another, fresh working folder with nothing but the URI."""
    from conftest import Bucket, IsolatedRay

    root = tmp_path_factory.mktemp("s3-study")
    bucket = Bucket(s3_server, f"study-{os.getpid()}")
    uri = f"{bucket.uri}/runs"
    first, second = root / "machine1", root / "machine2"
    first.mkdir()
    second.mkdir()
    ray = IsolatedRay(root)
    env = {**ray.env, **bucket.env}
    try:
        driver = subprocess.Popen(_cli(*STUDY, "--max-concurrent", "1", "--checkpoint-every", "1", "--storage-path", uri),
                                  cwd=first, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def one_ended_one_not():
            statuses = _saved_statuses(bucket, "runs/lrs", root)
            return statuses if len(statuses) == 2 and sorted(statuses.values()).count("TERMINATED") == 1 else None

        kill_when(driver, one_ended_one_not, "one trial ended and the other had not")
        ray.kill()
        ray = IsolatedRay(root)
        resumed = subprocess.run(_cli("lrs", "--smoke", "--resume", "--storage-path", uri), cwd=second,
                                 env={**ray.env, **bucket.env}, capture_output=True, text=True, timeout=600)
    finally:
        ray.kill()
    return bucket, uri, first, second, resumed


def test_a_study_on_s3_keeps_every_file_in_the_bucket_and_resumes_from_another_folder(killed_and_resumed):
    bucket, uri, first, second, resumed = killed_and_resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming s3://" in resumed.stderr
    # Nothing on either machine's working folder: epochs.json, run_info.json, result.json all went to the bucket.
    assert sorted(p.name for p in first.rglob("*")) == [] and sorted(p.name for p in second.rglob("*")) == []
    keys = bucket.keys("runs/lrs/")
    trials = sorted({k.split("/")[2] for k in keys if k.endswith("/params.json")})
    assert len(trials) == 2
    for trial in trials:
        epochs = json.loads(bucket.read(f"runs/lrs/{trial}/epochs.json"))
        assert [r["epoch"] for r in epochs] == [1, 2], trial
        assert f"runs/lrs/{trial}/run_info.json" in keys
        assert any(k.startswith(f"runs/lrs/{trial}/checkpoint_") for k in keys)
    for name in ("study.json", "results.parquet"):
        assert f"runs/lrs/{name}" in keys
    scratch = first.parent / "parquet"
    bucket.download("runs/lrs/", scratch, only="results.parquet")
    df = pd.read_parquet(scratch / "results.parquet")
    assert set(df["status"]) == {"finished"} and df["trial_id"].nunique() == 2
    assert df.groupby("trial_id")["epoch"].apply(list).tolist() == [[1, 2]] * 2  # every epoch exactly once
    assert df["val_acc"].notna().all()


def test_the_report_read_from_the_bucket_equals_the_report_of_a_local_copy(killed_and_resumed, tmp_path, monkeypatch):
    from analysis import load
    from analysis.report import main as report_main

    bucket, uri, *_ = killed_and_resumed
    for key, value in bucket.env.items():
        monkeypatch.setenv(key, value)
    copy = tmp_path / "copy"
    bucket.download("runs/", copy)
    pd.testing.assert_frame_equal(load(f"{uri}/lrs"), load(copy / "lrs"))

    assert report_main([f"{uri}/lrs"]) == 0  # default --out: <results>/report, in the bucket
    assert report_main([str(copy / "lrs"), "--out", str(tmp_path / "local-report")]) == 0
    from_bucket = tmp_path / "from-bucket"
    bucket.download("runs/lrs/report/", from_bucket)
    local = tmp_path / "local-report"
    assert sorted(p.relative_to(from_bucket).as_posix() for p in from_bucket.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for table in ("summary.csv", "trials.csv"):
        assert (from_bucket / "tables" / table).read_text() == (local / "tables" / table).read_text()
    said = (from_bucket / "report.md").read_text().replace(f"{uri}/lrs", "RESULTS")
    assert said == (local / "report.md").read_text().replace(str(copy / "lrs"), "RESULTS")


def _one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def test_storage_errors_are_one_line_before_ray_starts_and_overwrite_nothing(s3_bucket, tmp_path):
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="runs/lrs/keep.txt", Body=b"precious")
    unreachable = f"http://127.0.0.1:{free_port()}"
    no_keys = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    no_keys.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
                   AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    with moto_server(tmp_path, INITIAL_NO_AUTH_ACTION_COUNT="0") as signed_only:  # a store that wants credentials
        cases = [  # (storage path, environment, what the line must say)
            (f"{s3_bucket.uri}/runs", {**os.environ, "AWS_ENDPOINT_URL": unreachable},
             f"cannot reach the endpoint {unreachable}"),
            ("s3://any-bucket/runs", {**no_keys, "AWS_ENDPOINT_URL": signed_only}, "no credentials found; set AWS_"),
            ("s3://no-such-bucket-here/runs", dict(os.environ), "bucket 'no-such-bucket-here' does not exist"),
            ("/proc/tune-cifar-results", dict(os.environ), "storage path /proc/tune-cifar-results is not writable"),
        ]
        for storage, env, needle in cases:
            proc = subprocess.run(_cli(*STUDY, "--storage-path", storage), capture_output=True, text=True,
                                  timeout=120, cwd=tmp_path, env={**env, "RAY_ADDRESS": "127.0.0.1:1"})  # no Ray
            line = _one_error_line(proc)
            assert needle in line and storage in line, line
    assert s3_bucket.keys() == ["runs/lrs/keep.txt"] and s3_bucket.read("runs/lrs/keep.txt") == b"precious"


def test_a_corrupt_results_parquet_is_one_line_from_the_report(tmp_path):
    experiment = tmp_path / "lrs"
    experiment.mkdir()
    (experiment / "study.json").write_text(json.dumps({"study": "lrs", "space": {"schedule": ["cosine"]}}))
    (experiment / "results.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    (experiment / "report").mkdir()
    (experiment / "report" / "report.md").write_text("the last good report")
    proc = subprocess.run([sys.executable, "-m", "analysis.report", str(experiment)], capture_output=True, text=True,
                          timeout=120)
    line = _one_error_line(proc)
    assert f"{experiment / 'results.parquet'}: unreadable results.parquet" in line and "move it aside" in line
    assert (experiment / "report" / "report.md").read_text() == "the last good report"
