"""Several Ray nodes on this machine, storage on an S3 server, and a worker node lost in the middle of a trial."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import IsolatedRay, run_cli

pytestmark = pytest.mark.slow

STUDY = ["lrs", "--smoke", "--epochs", "3", "--gpus-per-trial", "0", "--checkpoint-every", "1"]
SCRIPT = Path(__file__).parent / "cluster" / "node_loss.py"
COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


def test_a_lost_worker_node_restarts_its_trial_on_the_other_from_the_bucket(ray_session, s3_bucket, tmp_path):
    ray = IsolatedRay(tmp_path)  # the cluster's processes, kept apart from the session's Ray
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), f"{s3_bucket.uri}/runs", *STUDY], cwd=tmp_path,
                              env={**ray.env, **s3_bucket.env}, capture_output=True, text=True, timeout=600)
    finally:
        ray.kill()
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["code"] == 0, proc.stderr[-3000:]
    removed = outcome["removed"]
    assert removed, "no trial was caught between its first and second checkpoint"
    # Both workers had a trial when one was removed, as their run_info.json said.
    assert sorted(removed["nodes"].values()) == outcome["workers"]

    lost = removed["trial"]
    info = json.loads(s3_bucket.read(f"runs/lrs/{lost}/run_info.json"))
    survivor = next(n for n in outcome["workers"] if n != removed["node"])
    assert len(info["starts"]) == 2 and info["node_id"] == survivor  # restarted once, on the other node
    epochs = json.loads(s3_bucket.read(f"runs/lrs/{lost}/epochs.json"))
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    # From its checkpoint: epoch 1 ran only before the removal (a start from scratch would have rerun it).
    assert epochs[0]["timestamp"] < removed["time"] < epochs[-1]["timestamp"]

    s3_bucket.download("runs/lrs/", tmp_path / "copy", only="results.parquet")
    df = pd.read_parquet(tmp_path / "copy" / "results.parquet")
    assert set(df["status"]) == {"finished"}
    assert df.groupby("trial_id")["epoch"].apply(list).tolist() == [[1, 2, 3]] * 2  # every epoch once

    code, out = run_cli(*STUDY, "--storage-path", tmp_path / "undisturbed")  # the same study on one node
    assert code == 0, out
    reference = pd.read_parquet(tmp_path / "undisturbed" / "lrs" / "results.parquet")
    key = ["config/schedule", "epoch"]
    got = df.set_index(key).sort_index()[list(COMPARED)]
    want = reference.set_index(key).sort_index()[list(COMPARED)]
    pd.testing.assert_frame_equal(got, want, rtol=1e-6, atol=1e-9)
