import pytest
import torch

from tune_cifar.models import MODELS, build_model, drop_path


def test_mobilenet_has_the_reports_parameter_count():
    model = build_model("mobilenet", num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == 3_309_476


def test_resnet18_is_the_cifar_variant():
    model = build_model("resnet18")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == 11_220_132  # 11.17M + 100-way head


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_runs_forward_and_backward(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=100)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 100)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg")


def test_the_registry_matches_the_torch_free_list_of_names():
    from tune_cifar.schema import MODEL_NAMES

    assert sorted(MODELS) == sorted(MODEL_NAMES)


def test_mobilenetv2_has_the_reference_parameter_count():
    # 2,369,380: MobileNetV2(class_num=100) of weiaicunzai/pytorch-cifar100 models/mobilenetv2.py (commit
    # 03bbd58), counted by instantiating that file. Its conv biases and its 1x1 stem are in the count.
    model = build_model("mobilenetv2", num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == 2_369_380
    assert model.stem[0].kernel_size == (1, 1) and model.stem[0].stride == (1, 1)
    features = model.head(model.blocks(model.stem(torch.randn(2, 3, 32, 32))))
    assert features.shape == (2, 1280, 5, 5)  # strides 1, 2, 2, 2, 1, 1, 1 on the padded 34x34


def _classifier_input_source(model, x):
    """Which module's output the classifier reads, by the order of forward calls."""
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: calls.append((name, i[0], o)))
             for name, m in model.named_modules() if name in ("dropout", "linear")]
    model(x)
    for h in hooks:
        h.remove()
    (first, _, dropped), (second, linear_in, _) = calls
    assert (first, second) == ("dropout", "linear")
    return dropped, linear_in


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dropout_sits_before_the_classifier_and_is_off_in_eval(name):
    torch.manual_seed(0)
    model = build_model(name, dropout=0.5)
    assert isinstance(model.dropout, torch.nn.Dropout) and model.dropout.p == 0.5
    x = torch.randn(4, 3, 32, 32)
    model.train()
    dropped, linear_in = _classifier_input_source(model, x)
    assert dropped is linear_in
    zero_share = (linear_in == 0).float().mean().item()
    assert 0.4 < zero_share < 0.6  # features are post-ReLU(6) averages, so nonzero before dropout
    model.eval()
    plain = build_model(name, dropout=0.0).eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dropout_off_draws_nothing(name):
    """Off means the report's network: no module, no random draw (so existing runs stay bit-for-bit)."""
    model = build_model(name).train()
    assert isinstance(model.dropout, torch.nn.Identity)
    rng = torch.get_rng_state()
    model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.get_rng_state(), rng)


def test_drop_path_zeroes_whole_samples_at_its_rate_and_rescales():
    x = torch.ones(20_000, 2, 3, 3)
    assert drop_path(x, 0.25, training=False) is x
    torch.manual_seed(0)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # all of a sample, or none of it
    assert per_sample[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    dropped = (per_sample[:, 0] == 0).float().mean().item()
    assert abs(dropped - 0.25) < 0.015  # 5 standard deviations of a 20,000-sample proportion
    assert abs(out.mean().item() - 1) < 0.02  # the expectation is kept


def test_resnet18_drop_path_is_linear_in_depth_and_identity_in_eval():
    torch.manual_seed(0)
    model = build_model("resnet18", drop_path=0.2)
    rates = [m.drop_path for m in model.modules() if hasattr(m, "shortcut")]
    assert rates == pytest.approx([0.2 * i / 7 for i in range(8)]) and rates[0] == 0 and rates[-1] == 0.2
    plain = build_model("resnet18").eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    model.train()
    plain.train()
    assert not torch.equal(model(x), plain(x))  # training draws, and some branch of some sample falls


def test_drop_path_on_a_model_without_residual_blocks_is_an_error():
    with pytest.raises(ValueError, match="mobilenet has no stochastic depth"):
        build_model("mobilenet", drop_path=0.1)
