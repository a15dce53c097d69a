import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import random_split

from tune_cifar import data as D


@pytest.mark.parametrize("n,frac,seed", [(50_000, 0.2, 0), (1000, 0.2, 3), (333, 0.25, 7)])
def test_split_equals_random_split(n, frac, seed):
    train, val = D.split_indices(n, frac, seed)
    n_train, n_val = D.split_sizes(n, frac)
    ref_train, ref_val = random_split(range(n), [n_train, n_val], generator=torch.Generator().manual_seed(seed))
    assert train.tolist() == list(ref_train.indices)
    assert val.tolist() == list(ref_val.indices)


def test_channel_stats_match_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(300, 3, 32, 32), dtype=np.uint8)
    mean, std = D.channel_stats(x)
    direct = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) / 255
    np.testing.assert_allclose(mean.numpy(), direct.mean(1), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), direct.std(1), rtol=1e-5)
    assert mean.dtype == std.dtype == torch.float32 and mean.shape == std.shape == (3,)
    one, _ = D.channel_stats(np.full((2, 3, 4, 4), 255, np.uint8))
    assert one.tolist() == [1.0, 1.0, 1.0]


def test_crop_flip_matches_torchvision_per_image():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 256, size=(12, 3, 32, 32), dtype=np.uint8))
    dy = torch.tensor([0, 8, 4, 2, 0, 8, 1, 7, 3, 5, 6, 4])
    dx = torch.tensor([0, 8, 0, 8, 4, 3, 6, 1, 5, 2, 7, 4])
    flip = torch.tensor([i % 3 == 0 for i in range(12)])
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    ours = D.normalise(D.crop_flip(x, dy, dx, flip), mean, std)
    for i in range(len(x)):
        img = Image.fromarray(x[i].permute(1, 2, 0).numpy())  # as torchvision's CIFAR100 gives it
        img = TF.crop(TF.pad(img, 4, fill=0), int(dy[i]), int(dx[i]), 32, 32)  # RandomCrop(32, padding=4)
        if flip[i]:
            img = TF.hflip(img)
        ref = TF.normalize(TF.to_tensor(img), mean.tolist(), std.tolist())
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=1e-6)


def test_epoch_plan_offsets_uniform_and_flip_half():
    plan = D.EpochPlan.draw(81 * 400, seed=0, epoch=0)
    counts = torch.bincount(plan.dy * 9 + plan.dx, minlength=81).double()
    assert counts.numel() == 81 and (counts > 0).all()
    chi2 = ((counts - 400) ** 2 / 400).sum().item()
    assert chi2 < 130  # chi-square, 80 dof: p(chi2 > 130) < 0.001 when uniform
    assert abs(plan.flip.double().mean().item() - 0.5) < 0.01  # 4 sigma at n = 32,400
    assert sorted(plan.order.tolist()) == list(range(81 * 400))


def test_epoch_plan_is_seeded_and_differs_per_epoch():
    a, b, c = D.EpochPlan.draw(500, 0, 3), D.EpochPlan.draw(500, 0, 3), D.EpochPlan.draw(500, 0, 4)
    assert torch.equal(a.order, b.order) and torch.equal(a.dx, b.dx)
    assert not torch.equal(a.order, c.order)
    assert not torch.equal(a.order, D.EpochPlan.draw(500, 1, 3).order)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    D.write_synthetic(out, num_train=300, num_test=50, seed=0)
    return out


def test_synthetic_data_is_in_the_cifar_format(synthetic):
    with open(synthetic / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")  # as torchvision reads the real files
    assert set(raw) >= {"data", "fine_labels", "coarse_labels", "filenames"}
    assert raw["data"].dtype == np.uint8 and raw["data"].shape == (300, 3072)
    data = D.read_cifar100(synthetic)
    assert data.train_x.shape == (300, 3, 32, 32) and data.test_x.shape == (50, 3, 32, 32)
    assert len(data.class_names) == 100 and set(data.train_y.tolist()) == set(range(100))


def test_synthetic_images_are_class_dependent(synthetic):
    data = D.read_cifar100(synthetic)
    x = data.train_x.reshape(len(data.train_x), -1).astype(np.float64)
    centroids = np.stack([x[data.train_y == c].mean(0) for c in range(100)])
    test = data.test_x.reshape(len(data.test_x), -1).astype(np.float64)
    nearest = ((test[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == data.test_y).mean() > 0.9  # chance is 0.01


def test_device_data_batches_keep_last_partial_batch(synthetic):
    data = D.DeviceData(D.read_cifar100(synthetic), 0.2, 0, torch.device("cpu"))
    assert (data.num_train, len(data.val_x)) == (240, 60)
    plan = D.EpochPlan.draw(data.num_train, 0, 0)
    sizes = [len(y) for _, y in data.train_batches(plan, 100)]
    assert sizes == [100, 100, 40]
    labels = torch.cat([y for _, y in data.train_batches(plan, 100)])
    assert torch.equal(labels, data.train_y[plan.order])


def test_missing_data_without_download_says_what_to_do(tmp_path):
    with pytest.raises(D.DataError, match="no CIFAR-100 in .*synthetic"):
        D.load_cifar100(tmp_path, download=False)


def test_truncated_file_is_a_clear_error(tmp_path):
    D.write_synthetic(tmp_path, num_train=20, num_test=5)
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(D.DataError, match="truncated"):
        D.read_cifar100(tmp_path)


def test_wrong_shape_is_a_clear_error(tmp_path):
    D.write_synthetic(tmp_path, num_train=20, num_test=5)
    path = tmp_path / "cifar-100-python" / "test"
    with open(path, "wb") as f:
        pickle.dump({"data": np.zeros((5, 100), np.uint8), "fine_labels": [0] * 5}, f)
    with pytest.raises(D.DataError, match=r"expected uint8 of shape \(N, 3072\)"):
        D.read_cifar100(tmp_path)


def test_synthetic_cli_refuses_to_overwrite(tmp_path, capsys):
    assert D.main(["synthetic", "--out", str(tmp_path), "--train", "20", "--test", "5"]) == 0
    before = (tmp_path / "cifar-100-python" / "train").read_bytes()
    assert D.main(["synthetic", "--out", str(tmp_path), "--train", "30", "--test", "5"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert (tmp_path / "cifar-100-python" / "train").read_bytes() == before


def test_device_data_is_built_once_per_dataset_copy_split_and_device(synthetic):
    data = D.read_cifar100(synthetic)
    cpu = torch.device("cpu")
    first = D.device_data(data, 0.2, 0, cpu)
    assert D.device_data(data, 0.2, 0, cpu) is first
    assert D.device_data(pickle.loads(pickle.dumps(data)), 0.2, 0, cpu) is first  # as Ray's object store hands it on
    direct = D.DeviceData(data, 0.2, 0, cpu)
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "mean", "std"):
        assert torch.equal(getattr(first, name), getattr(direct, name)), name
    other_split = D.device_data(data, 0.25, 0, cpu)
    assert other_split is not first and len(other_split.val_x) == 75
    assert D.device_data(data, 0.25, 1, cpu) is not other_split
    again = D.read_cifar100(synthetic)  # another load of the same files is another copy: built anew
    assert D.device_data(again, 0.25, 1, cpu) is not D.device_data(data, 0.25, 1, cpu)


def test_generated_data_says_so_and_the_summary_counts_it(tmp_path):
    """What `python -m tune_cifar.data synthetic` writes is recorded as generated in every trial's run_info."""
    D.write_synthetic(tmp_path, num_train=60, num_test=20, classes=10)
    data = D.read_cifar100(tmp_path)
    assert D.data_summary(data) == {"generated": True, "train_images": 60, "test_images": 20, "classes": 10}
    train = tmp_path / "cifar-100-python" / "train"
    payload = pickle.loads(train.read_bytes())
    train.write_bytes(pickle.dumps({**payload, "batch_label": "training batch 1 of 1"}))  # as the release says
    assert not D.read_cifar100(tmp_path).generated
