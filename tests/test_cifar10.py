"""CIFAR-10 beside CIFAR-100 (issue 21, item 4): one `dataset` field, both release formats, on generated data."""

import json
import math
import pickle
import re

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli
from tune_cifar import data as D
from tune_cifar.config import ConfigError, TrainConfig
from tune_cifar.fused import compatible, group_configs
from tune_cifar.models import MODELS, build_for
from tune_cifar.studies import available_studies

DATASETS = ["cifar100", "cifar10"]


def test_the_two_releases_are_the_python_formats_torchvision_downloads():
    import torchvision.datasets

    for name, release in D.RELEASES.items():
        tv = getattr(torchvision.datasets, release.torchvision_class)
        assert tv.base_folder == release.folder  # where torchvision unpacks the tarball it md5-checks
        assert [f for f, _ in tv.train_list] == list(release.train_files)
        assert [f for f, _ in tv.test_list] == [release.test_file]
        assert tv.meta["filename"] == release.meta_file and tv.meta["key"] == release.names_key
        assert tv.url == release.url
    assert D.RELEASES["cifar10"].train_files == tuple(f"data_batch_{i}" for i in range(1, 6))


def test_synthetic_cifar10_is_in_cifar10s_format(tmp_path):
    root = D.write_synthetic(tmp_path, num_train=103, num_test=20, seed=0, dataset="cifar10")
    assert root == tmp_path / "cifar-10-batches-py"
    assert sorted(p.name for p in root.iterdir()) == ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)),
                                                      "test_batch"]
    batches = [pickle.loads((root / f"data_batch_{i}").read_bytes(), encoding="latin1") for i in range(1, 6)]
    assert [len(b["labels"]) for b in batches] == [21, 21, 21, 20, 20]  # five near-equal parts, as the release
    assert all(set(b) == {"batch_label", "labels", "data", "filenames"} for b in batches)  # no fine/coarse labels
    assert all(b["data"].dtype == np.uint8 and b["data"].shape[1] == 3072 for b in batches)
    meta = pickle.loads((root / "batches.meta").read_bytes())
    assert len(meta["label_names"]) == 10
    data = D.read_cifar(tmp_path, "cifar10")
    assert (data.dataset, data.generated, data.class_names[:2]) == ("cifar10", True, ["class_00", "class_01"])
    assert data.train_x.shape == (103, 3, 32, 32) and data.test_x.shape == (20, 3, 32, 32)
    # the five batches in order are the training set
    assert np.array_equal(data.train_y, np.concatenate([b["labels"] for b in batches]))
    assert np.array_equal(data.train_x[21:42].reshape(21, -1), batches[1]["data"])
    assert set(data.train_y.tolist()) == set(range(10))
    assert not D.has_dataset(tmp_path, "cifar100") and D.has_dataset(tmp_path, "cifar10")


def test_both_formats_of_the_same_images_read_alike(tmp_path):
    a = D.read_cifar(D.write_synthetic(tmp_path / "a", 60, 10, classes=10, dataset="cifar100").parent, "cifar100")
    b = D.read_cifar(D.write_synthetic(tmp_path / "b", 60, 10, classes=10, dataset="cifar10").parent, "cifar10")
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (len(a.class_names), len(b.class_names)) == (100, 10)


def break_file(root, dataset, how):
    """Damage one split file of a generated release; return its path."""
    release = D.RELEASES[dataset]
    path = root / release.folder / (release.train_files[-1] if how == "truncated" else release.test_file)
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif how == "shape":
        path.write_bytes(pickle.dumps({"data": np.zeros((5, 100), np.uint8), release.label_key: [0] * 5}))
    elif how == "labels":
        path.write_bytes(pickle.dumps({"data": np.zeros((5, 3072), np.uint8), release.label_key: [release.classes] * 5}))
    elif how == "no labels":
        path.write_bytes(pickle.dumps({"data": np.zeros((5, 3072), np.uint8)}))
    elif how == "missing":
        path.unlink()
    return path


@pytest.mark.parametrize("how", ["truncated", "shape", "labels", "no labels", "missing"])
def test_a_damaged_file_is_the_same_one_line_error_in_both_formats(tmp_path, how):
    messages = []
    for dataset in DATASETS:
        D.write_synthetic(tmp_path / dataset, 40, 10, dataset=dataset)
        path = break_file(tmp_path / dataset, dataset, how)
        with pytest.raises(D.DataError) as err:
            D.read_cifar(tmp_path / dataset, dataset)
        text = str(err.value)
        assert "\n" not in text and str(path) in text
        release = D.RELEASES[dataset]
        text = (text.replace(str(path.parent), "<release>").replace(path.name, "<file>").replace(release.folder, "<folder>")
                .replace(release.title, "<title>").replace(f"'{release.label_key}'", "'<labels>'")
                .replace(f"0..{release.classes - 1}", "0..<last>"))
        messages.append(re.sub(r"\(\w+Error\)", "(<error>)", text))  # where the cut falls decides pickle's error
    assert messages[0] == messages[1]  # only the names differ
    expected = {"truncated": "the file is truncated or not a <title> pickle", "shape": "expected uint8 of shape (N, 3072)",
                "labels": "labels outside 0..<last>", "no labels": "has no '<labels>' entry; it is not a <title> split",
                "missing": "is missing; pass --data-dir pointing at a folder holding"}[how]
    assert expected in messages[0]


@pytest.mark.parametrize("dataset", DATASETS)
def test_missing_data_without_download_names_the_dataset_and_how_to_generate_it(tmp_path, dataset):
    title, folder = D.RELEASES[dataset].title, D.RELEASES[dataset].folder
    with pytest.raises(D.DataError, match=f"no {title} in {tmp_path}/{folder}: .*synthetic --dataset {dataset} "):
        D.load_cifar(tmp_path, download=False, dataset=dataset)


def test_a_download_goes_through_torchvisions_md5_checked_class_of_the_dataset(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class Recorder:  # stands in for torchvision's class: writes what the real one would unpack
        def __init__(self, root, train, download):
            calls.append((type(self).__name__, root, train, download))
            if not train:
                D.write_synthetic(root, 30, 10, dataset="cifar10")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", type("CIFAR10", (Recorder,), {}))
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", type("CIFAR100", (Recorder,), {}))
    data = D.load_cifar(tmp_path, download=True, dataset="cifar10")
    assert calls == [("CIFAR10", str(tmp_path), True, True), ("CIFAR10", str(tmp_path), False, True)]
    assert data.dataset == "cifar10" and len(data.train_y) == 30
    assert D.load_cifar(tmp_path, download=True, dataset="cifar10").dataset == "cifar10"
    assert len(calls) == 2  # there now: read, not downloaded again


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dataset, classes", [("cifar100", 100), ("cifar10", 10)])
def test_every_model_has_one_output_per_class_of_its_dataset(name, dataset, classes):
    model = build_for(TrainConfig(model=name, dataset=dataset))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, classes)


def test_mobilenet_on_cifar10_has_the_smaller_classifiers_parameters():
    count = lambda dataset: sum(p.numel() for p in build_for(TrainConfig(dataset=dataset)).parameters())  # noqa: E731
    assert (count("cifar100"), count("cifar10")) == (3_309_476, 3_217_226)  # 90 fewer outputs of 1,024 + 1


def test_normalisation_is_the_statistics_of_the_datasets_own_training_split(tmp_path):
    a = D.read_cifar(D.write_synthetic(tmp_path / "a", 200, 10, dataset="cifar10", seed=1).parent, "cifar10")
    b = D.read_cifar(D.write_synthetic(tmp_path / "b", 200, 10, dataset="cifar100", seed=1).parent, "cifar100")
    train_idx, _ = D.split_indices(200, 0.2, 0)
    for data in (a, b):
        split = D.DeviceData(data, 0.2, 0, torch.device("cpu"))
        mean, std = D.channel_stats(data.train_x[train_idx])
        assert torch.equal(split.mean, mean) and torch.equal(split.std, std) and split.dataset == data.dataset
    # 10 classes' templates are not 100 classes': the statistics follow the data, not a constant
    assert not torch.allclose(D.DeviceData(a, 0.2, 0, torch.device("cpu")).mean,
                              D.DeviceData(b, 0.2, 0, torch.device("cpu")).mean, atol=1e-3)


def test_a_run_refuses_data_of_the_other_dataset(tmp_path):
    from tune_cifar.fused import train_fused
    from tune_cifar.train import train

    data = D.read_cifar(D.write_synthetic(tmp_path, 20, 5).parent)  # CIFAR-100's
    cfg = TrainConfig(dataset="cifar10", epochs=1, device="cpu")
    with pytest.raises(D.DataError, match=r"trains on CIFAR-10 \(dataset=cifar10\), but the data given is CIFAR-100"):
        train(cfg, data)
    with pytest.raises(D.DataError, match="but the data given is CIFAR-100"):
        train_fused([cfg], data)
    with pytest.raises(ConfigError, match="invalid dataset='cifar1000': must be one of cifar100, cifar10"):
        TrainConfig(dataset="cifar1000")


def test_fused_groups_never_mix_datasets():
    a, b = TrainConfig(lr=0.1), TrainConfig(lr=0.1, dataset="cifar10")
    assert compatible([a, b]) == ["dataset differs ('cifar10', 'cifar100')"]
    assert group_configs([a, b, a.replace(lr=0.2), b.replace(lr=0.2)]) == [[0, 2], [1, 3]]


def test_the_synthetic_command_writes_either_format(tmp_path, capsys):
    assert D.main(["synthetic", "--dataset", "cifar10", "--out", str(tmp_path), "--train", "20", "--test", "5"]) == 0
    assert sorted(set(D.read_cifar(tmp_path, "cifar10").train_y.tolist())) == list(range(10))  # all 10 by default
    assert D.main(["synthetic", "--dataset", "cifar10", "--out", str(tmp_path), "--train", "20", "--test", "5"]) == 2
    assert "cifar-10-batches-py already holds a dataset" in capsys.readouterr().err
    assert D.main(["synthetic", "--out", str(tmp_path), "--train", "20", "--test", "5"]) == 0  # beside it: CIFAR-100's
    with pytest.raises(SystemExit):
        D.main(["synthetic", "--dataset", "cifar10", "--out", str(tmp_path / "x"), "--classes", "11"])
    assert "--classes must be in 1..10" in capsys.readouterr().err


# --- the runner --------------------------------------------------------------------------------------


@pytest.mark.parametrize("study", available_studies())
def test_every_study_dry_runs_on_cifar10(study, tmp_path, capsys):
    code, out = run_cli(study, "--dry-run", "--set", "dataset=cifar10", "--storage-path", tmp_path)
    assert code == 0, capsys.readouterr().err
    fixed = [line for line in out.splitlines() if line.startswith("  fixed: ")]
    assert fixed and all(line.startswith("  fixed: dataset=cifar10, ") for line in fixed)  # every step of a chain


def test_the_dataset_a_study_file_fixes_is_the_one_the_runner_looks_for(tmp_path, capsys):
    study = tmp_path / "ten.py"
    study.write_text('"""lr on CIFAR-10."""\nBASE = dict(dataset="cifar10", epochs=2)\nSPACE = {"lr": [0.01, 0.05]}\n')
    code, _ = run_cli(study, "--dry-run", "--no-download", "--data-dir", tmp_path / "data", "--storage-path", tmp_path)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no CIFAR-10 in {tmp_path / 'data'}/cifar-10-batches-py: ") and err.count("\n") == 1
    D.write_synthetic(tmp_path / "data", 20, 5, dataset="cifar10")
    code, out = run_cli(study, "--dry-run", "--no-download", "--data-dir", tmp_path / "data", "--storage-path", tmp_path)
    assert code == 0 and "fixed: dataset=cifar10, " in out


def test_a_study_that_varies_the_dataset_or_a_chain_that_mixes_two_is_refused(tmp_path, monkeypatch, capsys):
    import sys

    import search_spaces

    both = tmp_path / "both.py"
    both.write_text('"""Both."""\nSPACE = {"dataset": ["cifar10", "cifar100"]}\n')
    assert run_cli(both, "--dry-run", "--storage-path", tmp_path)[0] == 2
    assert "the 'both' study varies dataset ([cifar10, cifar100]): a run loads one dataset" in capsys.readouterr().err
    (tmp_path / "ten.py").write_text('"""Ten."""\nBASE = dict(dataset="cifar10")\nSPACE = {"lr": [0.1]}\n')
    (tmp_path / "mixed.py").write_text('"""Mixed."""\nCHAIN = ["lr", "ten"]\n')
    monkeypatch.setattr(search_spaces, "__path__", [*search_spaces.__path__, str(tmp_path)])
    for name in ("ten", "mixed"):
        monkeypatch.delitem(sys.modules, f"search_spaces.{name}", raising=False)
    assert run_cli("mixed", "--dry-run", "--storage-path", tmp_path / "r")[0] == 2
    assert ("the 'mixed' chain's studies train on different datasets (lr: cifar100, ten: cifar10)"
            in capsys.readouterr().err)
    code, out = run_cli("mixed", "--dry-run", "--set", "dataset=cifar10", "--storage-path", tmp_path / "r")
    assert code == 0 and out.count("fixed: dataset=cifar10, ") == 2


@pytest.mark.slow
def test_a_cifar10_smoke_study_trains_ten_outputs_and_its_report_compares_with_nothing_published(
        ray_session, tmp_path):
    from analysis.render import to_markdown
    from analysis.report import build

    code, out = run_cli("lrs", "--smoke", "--epochs", "1", "--set", "dataset=cifar10", "--gpus-per-trial", "0",
                        "--storage-path", tmp_path)
    assert code == 0, out
    df = pd.read_parquet(tmp_path / "lrs" / "results.parquet")
    assert len(df) == 2 and set(df["config/dataset"]) == {"cifar10"} and set(df["status"]) == {"finished"}
    # a 10-way classifier starts near ln 10 = 2.3 nats; a 100-way one near ln 100 = 4.6, still ~4.5 after 13 steps
    assert (df["val_loss"] < math.log(100) - 1).all(), df["val_loss"].tolist()
    infos = [json.loads(p.read_text()) for p in (tmp_path / "lrs").glob("*/run_info.json")]
    assert [i["data"]["classes"] for i in infos] == [10, 10] and all(i["config"]["dataset"] == "cifar10" for i in infos)
    study = json.loads((tmp_path / "lrs" / "study.json").read_text())
    assert study["base"]["dataset"] == "cifar10"
    report = build(tmp_path / "lrs", log=lambda msg: None)
    md = to_markdown(report.blocks)
    assert report.title == "Report: MobileNet on generated data (10 classes, CIFAR-10 format), 1 study"
    assert "not CIFAR-10; no published value applies" in md
    assert "**Data:** generated images, not CIFAR-10: 800 training, 200 validation and 200 test images of 10 classes" in md
    assert "(report)" not in md and "Table 3." not in md and re.search(r"dataset=cifar10", md)


# --- the report ---------------------------------------------------------------------------------------


def test_a_report_on_real_cifar10_names_it_and_compares_with_nothing_published(tmp_path):
    from analysis.render import to_markdown
    from analysis.report import build
    from test_analysis_fixtures import write_study
    from test_analysis_report import generated_study

    generated_study(tmp_path, {"generated": False, "train_images": 50000, "test_images": 10000, "classes": 10},
                    carried={"dataset": "cifar10"})
    report = build(tmp_path, log=lambda msg: None)
    md = to_markdown(report.blocks)
    assert report.title == "Report: MobileNet on CIFAR-10, 1 study"
    assert "**Data:** CIFAR-10: 40,000 training, 10,000 validation and 10,000 test images of 10 classes" in md
    assert "**CIFAR-10:** this study trained on CIFAR-10; the report's published figures are CIFAR-100's" in md
    assert "(report)" not in md and "The report's winner was" not in md and "Table 1." not in md
    assert "Generated data" not in md and "dataset=cifar10" in md  # the Fixed line names it

    # beside a CIFAR-100 study: each keeps its own columns, and each dataset is ranked apart
    write_study(tmp_path, "wd", {"weight_decay": [0.0001, 0.0005]}, epochs=2)
    report = build(tmp_path, log=lambda msg: None)
    md = to_markdown(report.blocks)
    assert report.title == "Report: MobileNet on CIFAR-10 and CIFAR-100, 2 studies"
    lr, wd = md.split("(`lr`)")[1].split("\n## ")[0], md.split("(`wd`)")[1].split("\n## ")[0]
    assert "(report)" not in lr and "val acc (report)" in wd
    sections = [line for line in md.splitlines() if line.startswith("## Every configuration, ranked")]
    assert sections == ["## Every configuration, ranked (CIFAR-10)", "## Every configuration, ranked (CIFAR-100)"]
    ten = md.split("ranked (CIFAR-10)")[1].split("\n## ")[0]
    assert "| lr |" in ten and "| wd |" not in ten and "0.6983" not in ten
    assert {"tables/ranking_cifar10.md", "tables/ranking_cifar100.md"} <= set(report.files)


def test_too_few_training_images_for_five_batch_files_is_refused_and_writes_nothing(tmp_path, capsys):
    from tune_cifar.data import main

    with pytest.raises(SystemExit) as e:
        main(["synthetic", "--dataset", "cifar10", "--train", "2", "--test", "1", "--out", str(tmp_path / "d")])
    assert e.value.code == 2 and "--train must be >= 5 for CIFAR-10" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    assert main(["synthetic", "--dataset", "cifar10", "--train", "5", "--test", "1", "--out", str(tmp_path / "d")]) == 0
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit):
        main(["synthetic", "--out", str(tmp_path / "f")])
    assert (tmp_path / "f").read_text() == "x"
