"""train.py's CUDA branches, reached on a CPU: precision switches, determinism, CUDA RNG restore (issue 20)."""

import copy
import os

import pytest
import torch

from tune_cifar.config import TrainConfig
from tune_cifar.data import CifarData, DeviceData, synthetic_images
from tune_cifar.train import (CheckpointMismatch, TrainState, precision_state, set_determinism, set_fp32_matmul,
                              train)


@pytest.fixture
def switches():
    """Every global switch these tests turn, put back afterwards (both APIs through the legacy setters)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
    if saved[6] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[6]


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("bf16", True), ("fp32", False)])
def test_both_precision_apis_stay_readable_after_set_fp32_matmul(switches, precision, tf32):
    # Only the newer flags set (the code before issue 20) left the legacy reads raising "mix of the legacy and new APIs".
    set_fp32_matmul(precision)
    state = precision_state()
    assert state["matmul_allow_tf32"] is tf32 and state["cudnn_allow_tf32"] is tf32
    assert state["float32_matmul_precision"] == ("high" if tf32 else "highest")
    if "conv_fp32_precision" in state:  # torch >= 2.9: the newer flags say the same
        assert state["matmul_fp32_precision"] == ("tf32" if tf32 else "ieee")
        assert (state["conv_fp32_precision"] == "tf32") is tf32  # the legacy setter writes "none" for off
    with torch.backends.cudnn.flags(enabled=True, deterministic=False):  # what Inductor and cudnn users enter
        pass


def test_set_fp32_matmul_repairs_a_mix_left_by_the_newer_api(switches):
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has only the legacy flags")
    # What the code before issue 20 did (conv to "ieee"), beside an RNN flag left at "tf32": the legacy read is
    # then ambiguous. Both set here, since earlier tests in the process may have left the RNN flag at "ieee"
    # (then conv "ieee" is no mix: stop 25's CI).
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        torch.backends.cudnn.allow_tf32
    set_fp32_matmul("fp32")
    assert precision_state()["cudnn_allow_tf32"] is False


def test_deterministic_is_pinned_by_every_run(switches, small_device_data):
    seen = []

    def look(metrics, state):
        seen.append((torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled()))

    cfg = TrainConfig(epochs=1, batch_size=32, device="cpu", eval_batch_size=64)
    train(cfg.replace(deterministic=True), small_device_data, look)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # before the run's first cuBLAS handle
    train(cfg, small_device_data, look)  # the next run in this process does not inherit it
    assert seen == [(True, True, True), (False, False, True)]


def test_deterministic_runs_and_resumes_bit_for_bit(switches, small_device_data):
    cfg = TrainConfig(epochs=2, batch_size=32, device="cpu", eval_batch_size=64, deterministic=True)
    states = []
    full = train(cfg, small_device_data, lambda m, s: states.append(copy.deepcopy(s.state_dict())))
    resumed = train(cfg, small_device_data, resume_from=states[0])
    assert resumed["val_loss"] == full["val_loss"] and resumed["train_loss"] == full["train_loss"]


def test_the_fused_loop_honours_deterministic(switches, small_device_data):
    from tune_cifar.fused import compatible, train_fused

    cfgs = [TrainConfig(epochs=1, batch_size=32, device="cpu", eval_batch_size=64, deterministic=True, seed=s)
            for s in (0, 1)]
    assert compatible(cfgs) == []
    assert compatible([cfgs[0], cfgs[1].replace(deterministic=False)]) == ["deterministic differs (False, True)"]
    seen = []
    train_fused(cfgs, small_device_data, lambda i, m, s: seen.append(torch.are_deterministic_algorithms_enabled()))
    assert seen == [True, True]


@pytest.fixture
def cuda_rng_calls(monkeypatch):
    """CUDA as a trial on a one-GPU node sees it; set_rng_state behaves as torch's does for an index it lacks."""
    calls = []

    def set_rng_state(state, index):
        if index >= 1:
            raise IndexError("tuple index out of range")  # torch.cuda.default_generators[index]
        if not isinstance(state, torch.Tensor) or state.numel() != 16:
            raise RuntimeError("Expected a state of 16 bytes")
        calls.append(index)

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    return calls


def _on_fake_cuda(cfg):
    state = TrainState(cfg, torch.device("cpu"))
    saved = state.state_dict()
    state.device = torch.device("cuda")  # load_state_dict's CUDA branch, on CPU tensors
    return state, saved


def test_cuda_rng_of_more_gpus_restores_the_visible_ones(cuda_rng_calls, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    state, saved = _on_fake_cuda(TrainConfig(device="cpu"))
    state.load_state_dict({**saved, "cuda_rng": [torch.zeros(16, dtype=torch.uint8)] * 4})
    assert cuda_rng_calls == [0]


@pytest.mark.parametrize("visible, cuda_rng", [
    (2, [torch.zeros(16, dtype=torch.uint8)] * 4),  # torch counts a GPU it has no generator for: IndexError
    (1, [torch.zeros(8, dtype=torch.uint8)]),  # another generator's state
    (1, 7),  # not a list of tensors at all
])
def test_a_cuda_rng_state_that_does_not_fit_is_a_mismatch_so_the_trial_starts_over(
        cuda_rng_calls, monkeypatch, visible, cuda_rng):
    # Before issue 20 the IndexError and TypeError escaped as themselves, which crash a trial (trainable.py
    # starts over only on CheckpointMismatch).
    from tune_cifar.trainable import _start_over_on_mismatch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    state, saved = _on_fake_cuda(TrainConfig(device="cpu"))
    bad = {**saved, "cuda_rng": cuda_rng}
    with pytest.raises(CheckpointMismatch, match="CUDA RNG"):
        state.load_state_dict(bad)
    starts = []
    _start_over_on_mismatch(lambda resume: starts.append(resume) or (resume and state.load_state_dict(resume)),
                            bad, "test")
    assert starts == [bad, None]  # tried the checkpoint, then started over


@pytest.fixture(scope="module")
def small_device_data():
    labels = torch.arange(160) % 100
    x = synthetic_images(labels.numpy(), 0)
    data = CifarData(x, labels.numpy(), x[:64], labels[:64].numpy(), [str(i) for i in range(100)], source="test")
    return DeviceData(data, 64 / 160, 0, torch.device("cpu"))
