import pytest
import torch

from tune_cifar.models import MODELS, build_model


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
