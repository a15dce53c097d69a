"""The machine, the projection of the `all` study, and the printed table."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch

from tune_cifar.bench.common import fmt
from tune_cifar.studies import load_study

TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES = 40_000, 10_000, 10_000  # per epoch: train + val; per trial: test once
FULL_DATA_BYTES = (50_000 + 10_000) * 3 * 32 * 32  # the uint8 splits a real trial keeps on its device
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, by GPU name substring
PROJECTED_STUDY = "all"  # the report's whole chain


def projection(result: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    train_part = result.get("train")
    if not train_part:
        return None
    best = train_part["ours"][train_part["default_variant"]]
    study = load_study(PROJECTED_STUDY)
    trial_epochs, n_trials = study.trial_epochs(), study.num_trials()
    seconds = (trial_epochs * (TRAIN_IMAGES / best["images_per_s"] + VAL_IMAGES / best["eval_images_per_s"])
               + n_trials * TEST_IMAGES / best["eval_images_per_s"])
    packing = (result.get("pack") or {}).get("packing_factor") or 1.0
    out = {"variant": train_part["default_variant"], "study": PROJECTED_STUDY, "trial_epochs": trial_epochs,
           "device_hours": seconds / 3600, "device_hours_packed": seconds / 3600 / max(packing, 1.0),
           "packing_factor": packing}
    name = result["machine"]["device_name"]
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None) if device.type == "cuda" else None
    achieved = train_part["train_gflop_per_image"] * 1e9 * best["images_per_s"]
    out.update(achieved_tflops=achieved / 1e12, peak_tflops=peak / 1e12 if peak else None,
               fraction_of_peak=achieved / peak if peak else None)
    return out


def machine(device: torch.device) -> dict[str, Any]:
    try:
        ray_version = importlib.metadata.version("ray")  # without importing it
    except importlib.metadata.PackageNotFoundError:
        ray_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {"device": device.type, "device_name": name, "cpu_cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "ray": ray_version,
            "load_average_1m": os.getloadavg()[0],
            "python": platform.python_version()}


PARTS = ("augment", "train", "pack", "tune", "fused")


def format_table(r: dict[str, Any]) -> str:
    m = r["machine"]
    failed = {n: r[n]["error"] for n in PARTS if isinstance(r.get(n), dict) and set(r[n]) == {"error"}}
    r = {**r, **{n: None for n in failed if n != "tune"}}
    if "tune" in failed:
        r.pop("tune")
    lines = [f"tune_cifar.bench on {m['device']} ({m['device_name']}, {m['cpu_cores']} cores), torch {m['torch']}, "
             f"ray {m['ray'] or 'not installed'}, data {r['data']}; load average {m['load_average_1m']:.2f} at "
             f"start, {r['load_average_1m_at_end']:.2f} at end"]
    if r.get("augment"):
        a = r["augment"]
        lines += [f"\n1. augmentation + batching ({a['images']} images, batch {a['batch_size']})",
                  f"   {'pipeline':<50}{'images/s':>12}{'ours is':>10}",
                  f"   {'ours: on-device gather, crop_flip, normalise':<50}{fmt(a['ours_images_per_s']):>12}{'':>10}"]
        for w, d in a["dataloader"].items():
            lines.append(f"   {f'torchvision transforms, DataLoader {w} workers':<50}{fmt(d['images_per_s']):>12}"
                         f"{fmt(d['speedup'], '.1f') + 'x':>10}")
    if r.get("train"):
        t = r["train"]
        lines += [f"\n2. training MobileNet ({t['steps']} steps of {t['batch_size']} per timed epoch, each after a warm-up "
                  f"epoch; fastest of {t['repeats']} rounds; {t['train_gflop_per_image']:.3f} GFLOP/image)",
                  f"   {'loop':<50}{'images/s':>12}{'ms/step':>10}{'vs ref':>8}",
                  f"   {'reference: template, ' + str(t['reference']['dataloader_workers']) + ' workers, fp32 (TF32 conv)':<50}"
                  f"{fmt(t['reference']['images_per_s']):>12}{fmt(t['reference']['ms_per_step']):>10}{'1.00x':>8}"]
        for name, v in t["ours"].items():
            label = f"ours {name}" + (" (default)" if v["default"] else "")
            if "error" in v:
                lines.append(f"   {label:<50}  failed: {v['error'][:120]}")
                continue
            lines.append(f"   {label:<50}{fmt(v['images_per_s']):>12}{fmt(v['ms_per_step']):>10}"
                         f"{fmt(v['speedup'], '.2f') + 'x':>8}")
        if "host_syncs_per_step" in t:
            lines.append(f"   host syncs per step in our loop: {fmt(t['host_syncs_per_step'], '.2f')}")
    if r.get("pack"):
        p = r["pack"]
        lines += [f"\n3. packing: K processes training at once on one {m['device']} ({p['steps']} steps of "
                  f"{p['batch_size']} each)",
                  f"   {'K':>3}{'threads':>9}{'total images/s':>16}{'per process':>13}{'vs K=1':>8}{'peak MiB/proc':>15}"]
        for row in p["rows"]:
            lines.append(f"   {row['k']:>3}{fmt(row['threads'], 'd') if row['threads'] else '-':>9}"
                         f"{fmt(row['images_per_s']):>16}{fmt(row['per_process_images_per_s']):>13}"
                         f"{fmt(row['vs_k1'], '.2f') + 'x':>8}{fmt(row['peak_memory_mib']):>15}")
    if "tune" in r:
        t = r["tune"]
        if t is None:
            lines.append("\n4. Tune overhead: skipped (Ray not installed or --skip-tune)")
        else:
            lines += tune_lines(t)
    if r.get("projection"):
        q = r["projection"]
        lines += [f"\nprojection of the `{q['study']}` study ({q['trial_epochs']} trial-epochs of 40k train + 10k val images) "
                  f"with ours {q['variant']}: {q['device_hours']:.1f} {m['device']}-hours one trial at a time, "
                  f"{q['device_hours_packed']:.1f} packed ({q['packing_factor']:.2f}x)",
                  f"achieved {q['achieved_tflops']:.3f} TFLOP/s of training; peak "
                  f"{fmt(q['peak_tflops'], '.0f') if q['peak_tflops'] else 'unknown'} TFLOP/s"
                  + (f" ({100 * q['fraction_of_peak']:.1f}%)" if q['fraction_of_peak'] else "")]
        if r.get("trial_memory_mib") and m["device"] == "cuda":
            lines.append(f"one trial's device memory: {r['trial_memory_mib']:,.0f} MiB (measured in a fresh process: CUDA "
                         f"context, allocator cache, the full CIFAR-100 resident, evaluation batches of 1000)")
    if r.get("advice"):
        a = r["advice"]
        lines.append(f"advice: {a['trials_per_gpu']} trials per GPU, --gpus-per-trial {a['gpus_per_trial']:.3g} "
                     f"({a['why']})")
    for name, error in failed.items():
        lines.append(f"\n{name}: {error[:300]}")
    lines.append(f"\naugment_speedup {fmt(r['augment_speedup'], '.2f')}  train_speedup {fmt(r['train_speedup'], '.2f')}  "
                 f"tune_overhead_s_per_trial {fmt(r['tune_overhead_s_per_trial'], '.2f')}  "
                 f"checkpoint_bytes_per_trial_epoch {fmt(r.get('checkpoint_bytes_per_trial_epoch'), ',.0f')}")
    return "\n".join(lines)


def tune_lines(t: dict[str, Any]) -> list[str]:
    """Part 4: the runs' seconds, the overhead per trial item by item, and the bytes written to storage."""
    from tune_cifar.bench.timing import ITEMS

    v = t["variants"]
    names = list(v)
    labels = {"default": "default", "every_epoch": "every epoch"}
    lines = [f"\n4. Tune overhead ({t['trials']} trials x {t['epochs']} epochs on {t['train_images']} images, one at a "
             f"time on {t['threads']} thread(s), in both; fastest of {t['rounds']} rounds)",
             f"   {'one after another in one process':<52}{t['sequential_s']:8.1f} s",
             *(f"   {'through Tune (run_study), ' + labels.get(n, n) + ' checkpoints':<52}{v[n]['tune_fit_s']:8.1f} s"
               for n in names),
             f"   (ray.init {t['ray_init_s']:.1f} s more, once)",
             f"   {'overhead per trial, s':<64}" + "".join(f"{labels.get(n, n):>13}" for n in names)]
    for key, label in ITEMS.items():
        lines.append(f"     {label:<62}" + "".join(f"{v[n]['breakdown_s_per_trial'][key]:13.3f}" for n in names))
    lines += [f"   {'total':<64}" + "".join(f"{v[n]['overhead_s_per_trial']:13.3f}" for n in names),
              f"   {'  each further trial (median of trials 2..n)':<64}"
              + "".join(f"{fmt(v[n]['marginal_overhead_s_per_trial'], '13.3f')}" for n in names),
              f"   {'  once per study, s (actor start, a fresh process first step)':<64}"
              + "".join(f"{fmt(v[n]['one_off_s'], '13.2f')}" for n in names),
              f"   {'written to storage per trial-epoch, bytes':<64}"
              + "".join(f"{v[n]['storage_bytes_per_trial_epoch']:13,.0f}" for n in names),
              f"   {'  of which checkpoints':<64}"
              + "".join(f"{v[n]['checkpoint_file_bytes_per_trial_epoch']:13,.0f}" for n in names),
              f"   storage written per trial-epoch: {t['storage_cut']:,.1f}x less than with a checkpoint every epoch"]
    return lines
