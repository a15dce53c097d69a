import json
import subprocess
import sys

import pytest
import torch
import torchvision.transforms.functional as TF

from tune_cifar.bench import baseline, cli, common, report
from tune_cifar.bench import tune as bench_tune
from tune_cifar.studies import load_study
from tune_cifar.config import TrainConfig
from tune_cifar.data import PAD, EpochPlan
from tune_cifar.train import train

TINY = ["--device", "cpu", "--batch-size", "16", "--augment-images", "64", "--repeats", "1", "--workers", "0,2",
        "--train-steps", "2", "--train-repeats", "1", "--eval-images", "16", "--pack", "1,2", "--pack-steps", "1"]


class PlannedCropFlip:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, with an EpochPlan's
    draws taken in item order (a loader without shuffling and workers asks for items 0, 1, 2, ...)."""

    def __init__(self, plan: EpochPlan, mean: torch.Tensor, std: torch.Tensor):
        self.plan, self.mean, self.std, self.k = plan, mean.tolist(), std.tolist(), 0

    def __call__(self, img):
        k, self.k = self.k, self.k + 1
        img = TF.crop(TF.pad(img, PAD), int(self.plan.dy[k]), int(self.plan.dx[k]), 32, 32)
        if self.plan.flip[k]:
            img = TF.hflip(img)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)


def test_reference_loop_and_our_loop_train_the_same_model():
    cpu = torch.device("cpu")
    dd = common.device_data(64, 16, cpu, None)
    cfg = TrainConfig(device="cpu", precision="fp32", channels_last=False, batch_size=32, epochs=1)
    ours = {}
    train(cfg, dd, lambda metrics, state: ours.update(metrics, model=state.model.state_dict()))

    plan = EpochPlan.draw(dd.num_train, cfg.seed, 0)  # the draws our loop made in its epoch 0
    order = plan.order.numpy()
    ds = baseline.PilDataset(dd.train_x.numpy()[order], dd.train_y.numpy()[order], PlannedCropFlip(plan, dd.mean, dd.std))
    model, optimizer = baseline.reference_model(cfg.seed, cpu, lr=cfg.lr)
    loss, _, images = baseline.reference_epoch(model, optimizer, torch.utils.data.DataLoader(ds, batch_size=32), cpu)

    assert images == 64
    # NCHW, as the template: the same kernels in the same order, so the two agree to rounding. (NHWC sums in
    # another order; two steps from initialisation amplify that past any useful tolerance, on both sides of
    # float64, so the layouts are compared for speed only.)
    assert loss == pytest.approx(ours["train_loss"], rel=1e-5)
    reference = model.state_dict()
    assert reference.keys() == ours["model"].keys()
    for name, value in reference.items():  # two SGD steps with momentum, BN running statistics included
        torch.testing.assert_close(ours["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "tune_cifar.bench", *TINY, "--skip-tune", "--json", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(path.read_text()), proc.stdout


@pytest.mark.slow  # runs the benchmark in subprocesses
def test_json_holds_every_part_and_the_headline_figures(tiny_run):
    result, table = tiny_run
    assert {"machine", "augment", "train", "pack", "tune", "projection", "augment_speedup", "train_speedup",
            "tune_overhead_s_per_trial", "trial_memory_mib"} <= set(result)
    assert result["machine"]["device"] == "cpu"
    assert result["tune"] is None and result["tune_overhead_s_per_trial"] is None  # --skip-tune
    for heading in ("1. augmentation", "2. training", "3. packing", "4. Tune overhead: skipped", "augment_speedup"):
        assert heading in table


@pytest.mark.slow  # runs the benchmark in subprocesses
def test_ratios_are_ours_over_the_baseline(tiny_run):
    result, _ = tiny_run
    aug = result["augment"]
    assert set(aug["dataloader"]) == {"0", "2"}
    for d in aug["dataloader"].values():
        assert d["images_per_s"] > 0
        assert d["speedup"] == pytest.approx(aug["ours_images_per_s"] / d["images_per_s"])
    assert result["augment_speedup"] == aug["dataloader"]["2"]["speedup"]

    tr = result["train"]
    assert set(tr["ours"]) == {"fp32 NCHW", "fp32 channels_last"}
    assert [n for n, v in tr["ours"].items() if v["default"]] == [tr["default_variant"]] == ["fp32 channels_last"]
    for v in tr["ours"].values():
        assert v["images_per_s"] > 0 and v["eval_images_per_s"] > 0
        assert v["speedup"] == pytest.approx(v["images_per_s"] / tr["reference"]["images_per_s"])
    assert result["train_speedup"] == tr["ours"][tr["default_variant"]]["speedup"]
    assert 0.25 < tr["train_gflop_per_image"] < 0.32  # 3 x MobileNet's 93 MFLOP forward at 32x32


@pytest.mark.slow  # runs the benchmark in subprocesses
def test_packing_runs_every_k_asked_for(tiny_run):
    result, _ = tiny_run
    rows = result["pack"]["rows"]
    assert [r["k"] for r in rows] == [1, 2]
    assert [r["threads"] for r in rows] == [max(1, result["machine"]["cpu_cores"] // k) for k in (1, 2)]
    for r in rows:
        assert r["images_per_s"] > 0 and r["peak_memory_mib"] > 50
    assert result["trial_memory_mib"] == rows[0]["peak_memory_mib"]  # one process's peak, not K's


def test_projection_of_the_all_study():
    result = {"machine": {"device_name": "NVIDIA H100 80GB HBM3"},
              "train": {"default_variant": "v", "train_gflop_per_image": 0.3, "steps": 10, "batch_size": 128,
                        "ours": {"v": {"images_per_s": 1000.0, "eval_images_per_s": 1000.0}}},
              "pack": {"packing_factor": 2.0}}
    q = report.projection(result, torch.device("cuda"))
    study = load_study("all")
    # every trial-epoch sees 40k train + 10k val images at 1000 images/s; every trial 10k test images once
    assert q["trial_epochs"] == study.trial_epochs() and q["study"] == "all"
    assert q["device_hours"] == pytest.approx((study.trial_epochs() * 50 + study.num_trials() * 10) / 3600)
    assert q["device_hours_packed"] == pytest.approx(q["device_hours"] / 2)
    assert q["fraction_of_peak"] == pytest.approx(0.3e9 * 1000 / 989e12)


def test_runs_without_ray(monkeypatch):
    proc = subprocess.run([sys.executable, "-c", "import sys, tune_cifar.bench; "
                           "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert bench_tune.bench_tune(cli.parse_args(TINY), torch.device("cpu")) is None
