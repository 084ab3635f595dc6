"""imgclf.train.config: every tool builds from a config what main.py builds from it (configs/default.yaml under
it, links from data to model), and a wrong config gets main.py's own words. Parsing only: nothing trains."""

import pytest
import yaml
from conftest import REPO

from imgclf import eda
from imgclf.bench.pipeline import build
from imgclf.errors import UserError
from imgclf.train import cache_images, config, run


def settings(hparams) -> dict:
    """The arguments an object was built with, less LightningCLI's note of how to rebuild it from a checkpoint
    (only objects built beside a model carry it)."""
    return {key: value for key, value in hparams.items() if key != "_instantiator"}


def main_parse(monkeypatch, tmp_path, args: list[str], default_config):
    """The CLI `run.main` builds (run folder, loggers, Trainer), stopped before fitting."""
    built = []
    monkeypatch.setattr(run, "fit_then_test", lambda cli: built.append(cli) or cli.run_dir)
    run.main([*args, "--runs_dir", str(tmp_path / "runs")], default_config)
    return built[0]


def cache_tool_datamodule(monkeypatch, args: list[str]):
    """The DataModule `python -m imgclf.train.cache_images <args>` builds (it then refuses in-memory datasets)."""
    built = []
    instantiate = config.ConfigCLI.instantiate_classes

    def spy(cli):
        instantiate(cli)
        built.append(cli.datamodule)

    with monkeypatch.context() as patch, pytest.raises(UserError, match="held in memory whole"):
        patch.setattr(config.ConfigCLI, "instantiate_classes", spy)
        cache_images.main(args, config.DEFAULT_CONFIG)
    return built[0]


@pytest.fixture
def default_with_own_values(tmp_path, monkeypatch):
    """configs/default.yaml with values no class has as its default, in place of the project's."""
    settings = yaml.safe_load((REPO / "configs/default.yaml").read_text())
    settings["data"].update(batch_size=48, split_seed=7)
    settings["model"].update(label_smoothing=0.05)
    settings["trainer"].update(max_epochs=4)
    default = tmp_path / "default.yaml"
    default.write_text(yaml.safe_dump(settings))
    monkeypatch.setattr(config, "DEFAULT_CONFIG", default)
    return default


@pytest.mark.parametrize("case", ["fashion_mnist.yaml", "default values"])
def test_every_tool_builds_what_main_builds(case, tmp_path, monkeypatch, request):
    if case == "default values":  # a config that names only its dataset: everything else from the default
        request.getfixturevalue("default_with_own_values")
        path = tmp_path / "only_dataset.yaml"
        path.write_text("data:\n  dataset: fashion_mnist\n")
    else:
        path = REPO / "configs" / case
    main_cli = main_parse(monkeypatch, tmp_path, ["--config", str(path)], config.DEFAULT_CONFIG)
    data_hparams, model_hparams = dict(main_cli.datamodule.hparams), dict(main_cli.model.hparams)
    assert model_hparams["num_classes"] == 10 and list(model_hparams["image_size"]) == [28, 28]  # linked from the data

    assert settings(eda.load_datamodule(path).hparams) == settings(data_hparams)
    assert settings(cache_tool_datamodule(monkeypatch, ["--config", str(path)]).hparams) == settings(data_hparams)
    trainer_args, model, data, _ = build(["--config", str(path)], None, None)
    assert dict(model.hparams) == model_hparams
    assert dict(data.hparams) == {**data_hparams, "val_fraction": 0.0}  # the benchmark validates on the test set
    assert trainer_args["max_epochs"] == main_cli.trainer.max_epochs
    if case == "default values":  # the default's own values reached main.py, hence every tool
        assert (data_hparams["batch_size"], data_hparams["split_seed"]) == (48, 7)
        assert model_hparams["label_smoothing"] == 0.05 and main_cli.trainer.max_epochs == 4


def test_wrong_config_gets_mains_words_from_every_loader(tmp_path, capsys):
    bad = tmp_path / "typo.yaml"
    bad.write_text("model:\n  learning_rate: 0.1\n")
    with pytest.raises(SystemExit) as exited:
        run.main(["--config", str(bad), "--runs_dir", str(tmp_path / "runs")], config.DEFAULT_CONFIG)
    before, mains_words = capsys.readouterr().err.split("error: ", 1)
    mains_words = mains_words.strip()
    assert exited.value.code == 2 and "learning_rate" in mains_words
    assert len(before.splitlines()) <= 2 and "--help" in before  # a usage line and a tip, not every option
    with pytest.raises(UserError) as refused:
        config.load([bad])
    assert mains_words in str(refused.value) and "main.py --help" in str(refused.value)
    assert not (tmp_path / "runs").exists()
