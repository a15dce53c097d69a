import json
import subprocess
import sys

import pytest
import torch
import torchvision.transforms.functional as TF

from tune_cifar.bench import baseline, cli, common, report, timing
from tune_cifar.bench import tune as bench_tune
from tune_cifar.studies import load_study
from tune_cifar.config import TrainConfig
from tune_cifar.data import PAD, EpochPlan
from tune_cifar.train import train

TINY = ["--device", "cpu", "--batch-size", "16", "--augment-images", "64", "--repeats", "1", "--workers", "0,2",
        "--train-steps", "2", "--train-repeats", "1", "--eval-images", "16", "--pack", "1,2", "--pack-steps", "1",
        "--fused-k", "1,2", "--fused-steps", "1", "--fused-repeats", "1"]


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
                          capture_output=True, text=True, timeout=900)  # a hang guard: 786 s at load 7-10 here
    assert proc.returncode == 0, proc.stderr
    return json.loads(path.read_text()), proc.stdout


@pytest.mark.slow  # runs the benchmark in subprocesses
def test_json_holds_every_part_and_the_headline_figures(tiny_run):
    result, table = tiny_run
    assert {"machine", "augment", "train", "pack", "tune", "projection", "augment_speedup", "train_speedup",
            "tune_overhead_s_per_trial", "checkpoint_bytes_per_trial_epoch", "trial_memory_mib"} <= set(result)
    assert result["machine"]["device"] == "cpu"
    assert result["tune"] is None and result["tune_overhead_s_per_trial"] is None  # --skip-tune
    assert result["checkpoint_bytes_per_trial_epoch"] is None
    for heading in ("1. augmentation", "2. training", "3. packing", "4. Tune overhead: skipped", "augment_speedup",
                    "5. fused training"):
        assert heading in table
    fused = result["fused"]
    assert [row["k"] for row in fused["rows"]] == [1, 2]
    assert all(row["fused_images_per_s"] > 0 and row["sequential_images_per_s"] > 0 for row in fused["rows"])
    best_fused = max(row["fused_images_per_s"] for row in fused["rows"])
    best_packed = max(row["packed_images_per_s"] for row in fused["rows"])
    assert result["fused_speedup"] == pytest.approx(best_fused / best_packed)  # best fused over best packing


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


def _event(step, start, end, **details):
    return {"step": step, "start": start, "end": end, **details}


def test_breakdown_items_sum_to_the_overhead_and_land_where_they_were_spent():
    # Two trials through Tune from t=0 to t=20, against an in-process run of 5 s.
    events = [
        _event("trial", 3.0, 9.0), _event("data", 3.1, 3.3), _event("train", 3.5, 8.9),
        _event("save", 5.0, 5.2), _event("report", 5.2, 5.5, checkpoint=True, epoch_s=1.0),
        _event("report", 8.0, 8.1, checkpoint=False, epoch_s=1.5),
        _event("trial", 9.5, 19.0), _event("train", 9.6, 18.9), _event("data", 9.7, 9.8),  # inside train()
        _event("report", 18.0, 18.2, checkpoint=False, epoch_s=2.0),
    ]
    baseline = {"total_s": 5.0, "data_s": 0.1, "train_s": 4.8, "epochs_s": 4.0}
    items = timing.breakdown(events, 0.0, 20.0, baseline)
    assert set(items) == set(timing.ITEMS)
    assert sum(items.values()) == pytest.approx(20.0 - 5.0)
    assert items["actor_start"] == pytest.approx(3.0)
    assert items["between_trials"] == pytest.approx(0.5) and items["after_last_trial"] == pytest.approx(1.0)
    assert items["checkpoint_save"] == pytest.approx(0.2)
    assert items["report_with_checkpoint"] == pytest.approx(0.3) and items["report"] == pytest.approx(0.3)
    assert items["training"] == pytest.approx(4.5 - 4.0)
    assert items["data"] == pytest.approx(0.3 - 0.1)
    # trial spans (6 + 9.5) - train() calls (5.4 + 9.3) - data outside them (0.2) - the baseline's own loop (0.1)
    assert items["trainable_steps"] == pytest.approx(15.5 - 14.7 - 0.2 - 0.1)
    # one trial after another: (19 - 9) per further trial, against the median in-process call after the first
    assert timing.marginal_s(events, [3.0, 1.0, 2.0]) == pytest.approx(10.0 - 1.5)


def test_storage_bytes_count_the_checkpoints_tune_deleted(tmp_path):
    trial = tmp_path / "exp" / "trial_0"
    for index in (2, 3):  # num_to_keep=2: checkpoint_000000 and _000001 were written, then deleted
        (trial / f"checkpoint_{index:06d}").mkdir(parents=True)
        (trial / f"checkpoint_{index:06d}" / "state.pt").write_bytes(b"x" * 1000)
    (trial / "result.json").write_bytes(b"y" * 50)
    assert bench_tune.storage_bytes(tmp_path) == {"total": 4 * 1000 + 50, "checkpoints": 4 * 1000}


@pytest.mark.slow
def test_part_4_measures_overhead_and_storage_beside_checkpoints_every_epoch(tmp_path, isolated_ray):
    path = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "tune_cifar.bench", "--skip-augment", "--skip-train", "--skip-pack",
                           "--skip-fused", "--tune-trials", "2", "--tune-epochs", "2", "--tune-images", "16", "--tune-rounds", "1",
                           "--json", str(path)], capture_output=True, text=True, timeout=600, env=isolated_ray.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(path.read_text())
    tune = result["tune"]
    for name, variant in tune["variants"].items():
        items = variant["breakdown_s_per_trial"]
        assert set(items) == set(timing.ITEMS), name  # every step was timed inside the actor
        assert sum(items.values()) == pytest.approx(variant["overhead_s_per_trial"]), name
        assert items["actor_start"] > 0 and items["report"] + items["report_with_checkpoint"] > 0
    default, every = tune["variants"]["default"], tune["variants"]["every_epoch"]
    # MobileNet's weights and momentum buffers, 3.3M parameters each in fp32: one checkpoint per trial-epoch
    assert every["checkpoint_file_bytes_per_trial_epoch"] == pytest.approx(2 * 3_309_476 * 4, rel=0.01)
    # seconds-long trials save their final epoch only by default: one checkpoint per trial of 2 epochs
    assert default["checkpoint_file_bytes_per_trial_epoch"] == pytest.approx(
        every["checkpoint_file_bytes_per_trial_epoch"] / 2, rel=0.01)
    assert every["breakdown_s_per_trial"]["checkpoint_save"] > 0 and default["breakdown_s_per_trial"]["checkpoint_save"] > 0
    assert result["checkpoint_bytes_per_trial_epoch"] == default["storage_bytes_per_trial_epoch"] > 0
    assert 1.5 < tune["storage_cut"] <= 2  # 2 checkpoints per trial against 1, plus the small files both write
    assert result["tune_overhead_s_per_trial"] == default["overhead_s_per_trial"]
    for line in ("4. Tune overhead", "actor start", "written to storage per trial-epoch",
                 "checkpoint_bytes_per_trial_epoch"):
        assert line in proc.stdout


def test_a_failed_run_never_replaces_a_figure_nor_is_compared_with_one():
    from tune_cifar.bench.fused import keep_best

    best = {}
    failure = {"images_per_s": None, "peak_memory_mib": None, "error": "RuntimeError: graph capture"}
    keep_best(best, (1, "graph"), failure)
    assert best[1, "graph"] is failure  # the only record: the error is kept, to be shown
    keep_best(best, (1, "graph"), {"images_per_s": 10.0})  # before issue 20: float > None, a TypeError
    keep_best(best, (1, "graph"), dict(failure))  # before issue 20: overwrote the earlier success
    keep_best(best, (1, "graph"), {"images_per_s": 5.0})
    assert best[1, "graph"] == {"images_per_s": 10.0}


def test_advice_counts_trials_by_memory_and_by_throughput():
    from tune_cifar.bench.pack import advise

    rows = [{"k": 1, "images_per_s": 1000.0}, {"k": 2, "images_per_s": 1900.0}, {"k": 4, "images_per_s": 2400.0},
            {"k": 8, "images_per_s": 2450.0}]
    big = advise(total_mib=143_000, trial_mib=1_500, rows=rows)  # an H200 holds 85 such trials, but K=4 is as fast
    assert (big["trials_per_gpu"], big["limited_by"], big["gpus_per_trial"]) == (4, "throughput", 0.25)
    small = advise(total_mib=8_000, trial_mib=3_000, rows=rows)
    assert (small["trials_per_gpu"], small["limited_by"]) == (2, "memory")
    assert advise(total_mib=1_000, trial_mib=3_000, rows=rows)["trials_per_gpu"] == 1


def test_budget_runs_another_round_only_when_it_fits(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    budget = common.Budget(deadline=130.0)
    budget.round_took(20.0)
    assert budget.allows_another() and not budget.over()
    clock[0] = 115.0
    assert not budget.allows_another() and not budget.over()  # 115 + 20 > 130
    clock[0] = 131.0
    assert budget.over()
    assert common.Budget(None).allows_another() and not common.Budget(None).over()


def test_a_failing_part_is_recorded_the_others_run_and_the_json_is_written_after_each(tmp_path, monkeypatch):
    path = tmp_path / "b.json"
    on_disk = []

    def augment(args, device):
        raise RuntimeError("no DataLoader workers here")

    def pack(args, device, budget=None):
        on_disk.append(json.loads(path.read_text()))  # what the earlier parts left
        return {"steps": 1, "batch_size": 8, "rows": [{"k": 1, "threads": 2, "images_per_s": 5.0, "vs_k1": 1.0,
                                                       "per_process_images_per_s": 5.0, "peak_memory_mib": 60.0}],
                "best_k": 1, "packing_factor": 1.0}

    monkeypatch.setattr(cli, "bench_augment", augment)
    monkeypatch.setattr(cli, "bench_pack", pack)
    monkeypatch.setattr(cli, "bench_train", lambda args, device, budget=None: {
        "default_variant": "v", "train_gflop_per_image": 0.3, "steps": 1, "batch_size": 8, "repeats": 1,
        "min_timed_s": 0.0, "reference": {"images_per_s": 1.0, "ms_per_step": 8000.0, "dataloader_workers": 0},
        "ours": {"v": {"images_per_s": 2.0, "eval_images_per_s": 4.0, "ms_per_step": 4000.0, "speedup": 2.0,
                       "default": True}, "w": {"error": "RuntimeError: compile", "default": False}}, "speedup": 2.0})
    args = cli.parse_args(["--device", "cpu", "--skip-tune", "--skip-fused", "--json", str(path)])
    result = cli.run_bench(args)
    assert result["augment"] == {"error": "RuntimeError: no DataLoader workers here"}
    assert on_disk[0]["augment"] == result["augment"] and "pack" not in on_disk[0]
    assert json.loads(path.read_text())["pack"]["rows"][0]["k"] == 1 and result["trial_memory_mib"] == 60.0
    table = report.format_table(result)
    assert "augment: RuntimeError: no DataLoader workers here" in table and "3. packing" in table
    assert "ours w" in table and "failed: RuntimeError: compile" in table  # a failed variant, beside the others
    assert result["projection"]["variant"] == "v" and result["train_speedup"] == 2.0


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu", "--json", "/no/such/folder/b.json"], "--json /no/such/folder/b.json: no such folder"),
    (["--device", "cuda"], "no CUDA device is visible"),
])
def test_a_bad_json_path_or_a_missing_gpu_is_one_line_before_anything_runs(argv, message, capsys, monkeypatch):
    from tune_cifar.bench import cli

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        cli.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1], err
