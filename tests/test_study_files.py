"""A study from the user's own file: `python -m tune_cifar.run path/to/my_study.py` (issue 21, item 5)."""

import re
from pathlib import Path

import pytest

from conftest import run_cli
from tune_cifar.studies import StudyError, load_study

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The README's complete study file: the python block that starts with `# my_study.py`."""
    blocks = re.findall(r"```python\n(# my_study\.py\n.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.fixture
def example(tmp_path) -> Path:
    path = tmp_path / "studies" / "my_study.py"
    path.parent.mkdir()
    path.write_text(readme_example())
    return path


def test_the_readme_example_is_about_ten_lines():
    assert len(readme_example().strip().splitlines()) <= 11


def test_the_readme_example_dry_runs_its_grid_and_draws(example, tmp_path, capsys):
    code, out = run_cli(example, "--dry-run", "--storage-path", tmp_path / "results")
    assert code == 0, capsys.readouterr().err
    assert out.startswith("my_study: Label smoothing in {0, 0.1} with a sampled lr")
    assert "search random; 4 trials x 30 epochs = 120 trial-epochs" in out
    assert "weight_decay=0.0005" in out and "mixup_alpha=0.2" in out and "epochs=30" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+0\s", line)]
    assert [r[2] for r in rows] == ["0.0", "0.0", "0.1", "0.1"]  # two lr draws per grid point
    assert all(0.01 <= float(r[3]) <= 0.1 for r in rows)
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_list_names_the_file_study(example, capsys):
    code, out = run_cli(example, "--list")
    assert code == 0
    assert out.splitlines()[:2] == [
        "my_study: Smoothing at 30 epochs",
        "    Label smoothing in {0, 0.1} with a sampled lr, from the report's best configuration, 30 epochs."]
    assert "lr: Learning rate" not in out  # that one study, not the catalogue


def test_the_study_is_the_one_the_file_defines(example):
    study = load_study(str(example))
    assert (study.name, study.title, study.metric, study.mode) == ("my_study", "Smoothing at 30 epochs", "val_acc", "max")
    assert study.base["epochs"] == 30 and study.plan.num_samples == 2 and study.plan.search == "random"
    assert study.space["label_smoothing"] == [0.0, 0.1]


@pytest.mark.parametrize("source, says", [
    ('X = 1\n', "is not a study: it defines no SPACE (a dict: TrainConfig field -> list of values or a Tune domain; "
                "or CHAIN, a list of studies run in order); no DESCRIPTION (one sentence"),
    ('"""Has a docstring."""\nSPACE = [0.1, 0.2]\n', "is not a study: it defines no SPACE (a dict"),
    ('"""Doc."""\nBASE = [("lr", 0.1)]\nSPACE = {"lr": [0.1]}\n', "it defines no BASE as a dict"),
    ('"""Doc."""\nSPACE = {"learning_rate": [0.1]}\n', "unknown config key(s) learning_rate"),
    ('"""Doc."""\nSPACE = {"lr": [0.1]}\nMETRIC = "val_accuracy"\n',
     "METRIC must be one of val_acc, val_loss, train_acc, train_loss (reported every epoch), not 'val_accuracy'"),
    ('"""Doc."""\nSPACE = {"lr": [0.1]}\nMODE = "maximise"\n', "MODE must be 'max' or 'min', not 'maximise'"),
    ('"""Doc."""\nimport no_such_module\n', "cannot be loaded: ModuleNotFoundError: No module named 'no_such_module'"),
    ('"""Doc."""\nimport sys\nsys.exit(3)\n', "cannot be loaded: SystemExit: 3"),
    ('"""Doc."""\nSPACE = {"lr": 0.1}\n', "SPACE['lr'] must be a list of values or a Tune domain, not 0.1"),
    ('"""Doc."""\nSPACE = {"weight_decay": "5e-4"}\n', "SPACE['weight_decay'] must be a list of values"),
    ('"""Doc."""\nCHAIN = []\n', "CHAIN must be a non-empty list of study names, not []"),
    ('"""Doc."""\nCHAIN = "lr"\n', "CHAIN must be a non-empty list of study names, not 'lr'"),
    ('"""Doc."""\nCHAIN = ["lr", "other/my_study.py"]\n', "CHAIN names built-in studies only, not the file(s) other/my_study.py"),
])
def test_a_file_that_breaks_the_contract_is_one_error_naming_what(source, says, tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text(source)
    code, out = run_cli(path, "--dry-run", "--storage-path", tmp_path / "results")
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert err.startswith(f"error: {path}") and says in err, err
    assert len(err.strip().splitlines()) == 1
    if "DESCRIPTION" not in says:
        assert "DESCRIPTION" not in err  # a docstring is a description


def test_a_file_named_like_a_built_in_study_or_missing_is_refused(tmp_path):
    shadow = tmp_path / "lr.py"
    shadow.write_text('"""Mine."""\nSPACE = {"lr": [0.1]}\n')
    with pytest.raises(StudyError, match="has the name of the built-in study 'lr'; rename the file"):
        load_study(str(shadow))
    with pytest.raises(StudyError, match="no such study file"):
        load_study(str(tmp_path / "absent.py"))
    with pytest.raises(StudyError, match="unknown study 'absent'; available: "):  # a name, not a path
        load_study("absent")
