import argparse

import pytest

from tune_cifar.config import ConfigError, TrainConfig, add_config_flags, config_from_args


def test_defaults_match_the_protocol():
    cfg = TrainConfig()
    assert (cfg.model, cfg.momentum, cfg.batch_size, cfg.split_seed, cfg.val_fraction) == ("mobilenet", 0.9, 128, 0, 0.2)
    assert cfg.mixup_alpha == 0 and cfg.weight_decay == 0


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize("field,value", [
    ("lr", 0), ("lr", -0.1), ("weight_decay", -1e-4), ("mixup_alpha", -0.2), ("schedule", "exponential"),
    ("model", "vgg99"), ("batch_size", 0), ("epochs", 0), ("val_fraction", 1.0), ("device", "tpu"),
])
def test_invalid_value_names_its_field(field, value):
    with pytest.raises(ConfigError, match=rf"invalid {field}="):
        TrainConfig.from_dict({field: value})


def test_wrong_type_is_an_error_not_a_crash():
    with pytest.raises(ConfigError, match="invalid lr='fast'"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(ConfigError, match="invalid epochs=2.5"):
        TrainConfig.from_dict({"epochs": 2.5})


def test_frozen_and_replace_validates():
    cfg = TrainConfig()
    with pytest.raises(Exception):
        cfg.lr = 1.0  # type: ignore[misc]
    assert cfg.replace(lr=0.5).lr == 0.5
    with pytest.raises(ConfigError):
        cfg.replace(lr=-1)


def test_cli_flags_one_per_field():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(["--lr", "0.01", "--weight-decay", "5e-4", "--schedule", "cosine",
                              "--mixup-alpha", "0.2", "--epochs", "3", "--no-download"])
    cfg = config_from_args(args)
    assert (cfg.lr, cfg.weight_decay, cfg.schedule, cfg.mixup_alpha, cfg.epochs, cfg.download) == (
        0.01, 5e-4, "cosine", 0.2, 3, False)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_issue_12_options_are_off_by_default():
    cfg = TrainConfig()
    assert (cfg.dropout, cfg.drop_path, cfg.label_smoothing, cfg.nesterov) == (0, 0, 0, False)
    assert cfg.schedule == "constant" and cfg.mix == "mixup" and cfg.mixup_alpha == 0  # so no mixing at all


@pytest.mark.parametrize("field,value,extra", [
    ("dropout", 1.0, {}), ("dropout", -0.1, {}), ("drop_path", -0.1, {"model": "resnet18"}),
    ("drop_path", 1.0, {"model": "resnet18"}), ("drop_path", 0.1, {}), ("drop_path", 0.1, {"model": "mobilenetv2"}),
    ("step_milestones", "abc", {}), ("step_milestones", "30%,0", {}), ("step_milestones", "150%", {}),
    ("step_gamma", 0.0, {}), ("warmup_epochs", -1, {}), ("nesterov", True, {"momentum": 0.0}),
    ("label_smoothing", 1.0, {}), ("label_smoothing", -0.1, {}), ("mix", "both", {}),
    ("cutmix_alpha", -1.0, {}), ("cutmix_alpha", 0.0, {"mix": "cutmix"}), ("cutmix_prob", 1.5, {}),
    ("model", "vgg", {}), ("schedule", "poly", {}),
])
def test_invalid_issue_12_values_name_their_field(field, value, extra):
    with pytest.raises(ConfigError, match=rf"invalid {field}="):
        TrainConfig.from_dict({field: value, **extra})


def test_drop_path_error_says_which_models_have_residual_blocks():
    with pytest.raises(ConfigError, match="only resnet18 implements stochastic depth, not mobilenet"):
        TrainConfig(drop_path=0.1)
    assert TrainConfig(model="resnet18", drop_path=0.1).drop_path == 0.1


def test_every_training_field_identifies_a_configuration():
    from dataclasses import fields

    from tune_cifar.schema import CHECKPOINT_FIELDS, CONFIGURATION_FIELDS, MUTABLE_FIELDS

    names = {f.name for f in fields(TrainConfig)}
    assert set(CONFIGURATION_FIELDS) <= names
    new = {"dropout", "drop_path", "step_milestones", "step_gamma", "warmup_epochs", "nesterov", "label_smoothing",
           "mix", "cutmix_alpha", "cutmix_prob"}
    assert new <= set(CONFIGURATION_FIELDS) and new - set(MUTABLE_FIELDS) <= set(CHECKPOINT_FIELDS)
