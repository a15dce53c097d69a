"""A head (0 CPUs) and two 1-CPU worker nodes on this machine (ray.cluster_utils.Cluster), a study on the
storage URI given, and the worker node running one trial removed in the middle of that trial.

    python tests/cluster/node_loss.py s3://bucket/runs lrs --smoke --epochs 3 --checkpoint-every 1 ...

Run by tests/test_cluster.py in its own process (the test session has its own Ray). The node goes once
the trial has saved epoch 1 in the bucket and the driver has recorded it (epochs.json), and before its
second checkpoint: a full epoch's margin. The last line printed is JSON: exit code, the worker nodes'
ids, the removed node's id, the trial it ran, the time (epoch seconds) of the removal, and which node
each trial was on then.
"""

import json
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from tune_cifar.run import main
from tune_cifar.storage import list_files, read_text


def remove_a_node_mid_trial(cluster: Cluster, workers: dict, experiment: str, removed: dict) -> None:
    deadline = time.time() + 400
    while time.time() < deadline:
        files = list_files(experiment) if read_text(f"{experiment}/study.json") else []
        trials = sorted({f.split("/")[0] for f in files if f.endswith("/run_info.json")})
        for trial in trials:
            saved = {f.split("/")[1] for f in files if f.startswith(f"{trial}/checkpoint_")}
            recorded = json.loads(read_text(f"{experiment}/{trial}/epochs.json") or "[]")
            if saved == {"checkpoint_000000"} and [r["epoch"] for r in recorded] == [1]:
                nodes = {t: json.loads(read_text(f"{experiment}/{t}/run_info.json"))["node_id"] for t in trials}
                removed.update(node=nodes[trial], trial=trial, time=time.time(), nodes=nodes)
                cluster.remove_node(workers[nodes[trial]], allow_graceful=False)
                return
        time.sleep(0.2)


if __name__ == "__main__":
    storage, argv = sys.argv[1], sys.argv[2:]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = {node.node_id: node for node in (cluster.add_node(num_cpus=1) for _ in range(2))}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    removed: dict = {}
    killer = threading.Thread(target=remove_a_node_mid_trial,
                              args=(cluster, workers, f"{storage}/{argv[0]}", removed), daemon=True)
    killer.start()
    code = main([*argv, "--storage-path", storage, "--address", cluster.address])
    print(json.dumps({"code": code, "workers": sorted(workers), "removed": removed}), flush=True)
    ray.shutdown()
    cluster.shutdown()
