"""scripts/gpu_check.sh (tune_cifar.bench.check) on a CPU, as CI runs it, so the GPU's first run cannot rot."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tune_cifar.bench import check

ROOT = Path(__file__).resolve().parents[1]
CUDA_ONLY = {"compile", "host_syncs", "graph"}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / "check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    t0 = time.perf_counter()
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--json", str(path)],
                          capture_output=True, text=True, timeout=240, env=env, cwd="/")  # the script finds the repository
    return proc, json.loads(path.read_text()), time.perf_counter() - t0


def test_every_step_has_one_record_in_order_and_the_cuda_only_ones_say_why(cpu_run):
    proc, result, _ = cpu_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = result["steps"]
    assert [s["name"] for s in steps] == [name for name, _, _ in check.STEPS]
    for s in steps:
        assert s["seconds"] <= s["budget_s"] + 1, s["name"]
        if s["name"] in CUDA_ONLY:
            assert s["status"] == "skipped" and "CUDA only" in s["reason"] and "values" not in s
        else:
            assert s["status"] == "ok", s
    assert result["meta"]["device"] == "cpu" and result["meta"]["total_s"] < 120
    table = proc.stdout
    assert all(s["name"] in table for s in steps) and "skipped" in table and "total" in table


def test_the_figures_are_sane(cpu_run):
    _, result, _ = cpu_run
    v = {s["name"]: s.get("values") for s in result["steps"]}
    assert v["environment"]["torch"] and v["environment"]["cuda_available"] in (True, False)
    assert v["precision"]["fp32"]["cudnn_allow_tf32"] is False and v["precision"]["bf16"]["cudnn_allow_tf32"] is True
    for name in check.TRAIN_VARIANTS["cpu"]:
        row = v["train"][name]
        assert len(row["train_losses"]) == 2 and all(0 < loss < 10 for loss in row["train_losses"])
        assert row["images_per_s"] > 0 and row["ms_per_step"] > 0 and row["peak_rss_mib"] > 100
        # ms/step and images/s describe the same timed steps
        assert row["images_per_s"] * row["ms_per_step"] / 1000 == pytest.approx(v["train"]["batch_size"], rel=1e-6)
    assert v["determinism"]["deterministic=True"]["bit_exact"] is True
    assert [r["k"] for r in v["fused"]["rows"]] == list(check.SIZES["cpu"].fused_k)
    for r in v["fused"]["rows"]:
        assert r["fused_images_per_s"] > 0 and r["sequential_images_per_s"] > 0 and 0 <= r["epoch_setup_s"] < 30
    q = v["projection"]
    default = v["train"][check.DEFAULT_VARIANT["cpu"]]
    assert q["trial_epochs"] == 1845 and q["variant_images_per_s"] == default["images_per_s"]
    assert q["device_hours_one_at_a_time"] > 40_000 * 1845 / default["images_per_s"] / 3600  # training alone


def test_json_is_written_after_every_step_so_a_stuck_step_keeps_what_came_before(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    seen = []

    def slow(ctx):
        seen.append(json.loads(path.read_text())["steps"])  # what was on disk when this step began
        time.sleep(5)

    monkeypatch.setattr(check, "STEPS", [("environment", check.step_environment, 10), ("slow", slow, 1),
                                         ("broken", lambda ctx: 1 / 0, 5), ("precision", check.step_precision, 5)])
    assert check.main(["--device", "cpu", "--json", str(path)]) == 1
    assert [s["name"] for s in seen[0]] == ["environment"]
    steps = json.loads(path.read_text())["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [("environment", "ok"), ("slow", "timeout"),
                                                         ("broken", "failed"), ("precision", "ok")]
    assert steps[1]["seconds"] < 3 and "budget of 1 s" in steps[1]["error"]
    assert steps[2]["error"].startswith("ZeroDivisionError")


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--device", "cpu", "--steps", "train,warp"], "unknown step(s) warp"),
    (["--device", "cpu", "--json", "/no/such/folder/x.json"], "no such folder"),
    (["--device", "cpu", "--threads", "0"], "must be >= 1"),
    (["--device", "cpu", "--steps", ","], "names no step"),
    (["--device", "cpu", "--json", "/tmp"], "is a folder"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        check.parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cuda_without_a_gpu_is_refused_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        check.parse_args(["--device", "cuda"])
    assert "no CUDA device is visible" in capsys.readouterr().err


def test_nothing_on_its_path_imports_ray():
    code = ("import sys, tune_cifar.bench.check as c; import tune_cifar.bench.fused, tune_cifar.bench.training, "
            "tune_cifar.studies; print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_an_existing_record_is_kept_unless_forced(tmp_path, capsys):
    path = tmp_path / "gpu_check.json"
    path.write_text('{"steps": ["the only GPU record"]}')
    with pytest.raises(SystemExit) as e:
        check.parse_args(["--device", "cpu", "--json", str(path), "--steps", "environment"])
    assert e.value.code == 2 and "exists" in capsys.readouterr().err
    assert "the only GPU record" in path.read_text()
    assert check.main(["--device", "cpu", "--json", str(path), "--steps", "environment", "--force"]) == 0
    assert [s["name"] for s in json.loads(path.read_text())["steps"]] == ["environment"]


def test_the_projection_takes_no_gain_from_k_1(monkeypatch):
    ctx = check.Context(check.torch.device("cpu"), check.SIZES["cpu"])
    ctx.found["train"] = {check.DEFAULT_VARIANT["cpu"]: {"images_per_s": 100.0, "eval_images_per_s": 400.0}}
    ctx.found["fused"] = {"rows": [{"k": 1, "fused_vs_sequential": 1.37}, {"k": 2, "fused_vs_sequential": 1.1}]}
    out = check.step_projection(ctx)
    assert out["best_fused_k"] == 2 and out["k1_fused_vs_sequential"] == 1.37
    assert out["device_hours_fused"] == pytest.approx(out["device_hours_one_at_a_time"] / 1.1)
    ctx.found["fused"] = {"rows": [{"k": 1, "fused_vs_sequential": 1.37}]}
    assert "device_hours_fused" not in check.step_projection(ctx)  # K=1 alone fuses nothing
