"""The one way a config becomes objects, for main.py and every tool (EDA, the image cache, the benchmarks).

A config is main.py's command line: `configs/default.yaml` first, then each `--config` file on top of it, then
single `--section.key value` overrides, validated by Lightning's own parser (LightningCLI / jsonargparse),
with the data's facts (classes, channels, image size, normalization) linked into the model's arguments. A
tool asks `load` for what it needs: the validated config, the DataModule, the model; loading builds no run
folder, logger or Trainer. main.py's training run (imgclf.train.run) subclasses ConfigCLI to add those, and a
command-line tool with main.py's arguments (imgclf.train.cache_images) uses ConfigCLI as it is.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.cli import LightningCLI

from imgclf.data.datamodule import ImageDataModule
from imgclf.errors import UserError
from imgclf.model.classifier import ImageClassifier

PROJECT = Path(__file__).resolve().parents[3]  # the checkout: main.py and configs/ live there
DEFAULT_CONFIG = PROJECT / "configs" / "default.yaml"  # under every config, as main.py passes it
DATA_TO_MODEL = ["num_classes", "in_channels", "image_size", "mean", "std", "class_names"]
EVERYTHING = ("data", "model", "trainer")
# The usage line a wrong argument prints above its `error:` line; argparse's own listed every option (66 lines).
USAGE = "%(prog)s [-h] [-c CONFIG] [--print_config] [--SECTION.KEY VALUE ...]"


class ConfigCLI(LightningCLI):
    """main.py's parser (its arguments, the default config under every other, the data -> model links), and
    the objects named in `build`: "data"; "model" (with the data); "trainer" (all three, as LightningCLI does)."""

    def __init__(self, args: Sequence[str] | None, *, build: Collection[str] = EVERYTHING,
                 default_config: Path | None = None, datamodule_class: type[ImageDataModule] = ImageDataModule,
                 exit_on_error: bool = True, **kwargs) -> None:
        self.build = set(build)
        parser_kwargs = {"default_config_files": [str(default_config)] if default_config else [],
                         "exit_on_error": exit_on_error, "usage": USAGE}
        super().__init__(ImageClassifier, datamodule_class, run=False, args=args, seed_everything_default=0,
                         parser_kwargs=parser_kwargs, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Resume training from this checkpoint (e.g. runs/latest/last.ckpt), into a new "
                                 "run folder; `last`: the newest run's last.ckpt (of --run_name's runs if given).")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Parent folder of the run folders.")
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="Run folder name under runs_dir, instead of <time>-<dataset>-<network>.")
        parser.add_argument("--ddp_timeout_s", type=int, default=600,
                            help="Multi-process runs: seconds a rank waits for the others in a collective "
                                 "before the job fails (applies to strategies given by name, e.g. ddp).")
        for key in DATA_TO_MODEL:
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        # LightningCLI warns when `args` is given while sys.argv holds arguments too: a tool loading a config
        # in-process (a notebook's kernel, pytest) always has its own sys.argv, which is not ours to parse.
        self.config = parser.parse_args(args)

    def instantiate_classes(self) -> None:
        if "trainer" in self.build:
            super().instantiate_classes()
        elif "model" in self.build:
            # Every section but the trainer's (its callbacks and loggers); the links fill the model from the data.
            sections = self.config.clone()
            del sections["trainer"]
            self.config_init = self.parser.instantiate_classes(sections)
            self.datamodule, self.model = self.config_init.data, self.config_init.model
        else:  # the model is not built at all: its pretrained weights may be a download away
            self.model = None
            self.datamodule = self.datamodule_class(**self.config.data.as_dict()) if "data" in self.build else None


@dataclass
class LoadedConfig:
    config: Namespace  # validated, with every default filled in: what main.py's config.yaml records
    datamodule: ImageDataModule | None  # None unless "data" (or "model") was asked for; not set up yet
    model: ImageClassifier | None  # None unless "model" was asked for


def load(configs: Sequence[str | Path] = (), overrides: Sequence[str] = (), *,
         build: Collection[str] = ("data", "model"),
         datamodule_class: type[ImageDataModule] = ImageDataModule) -> LoadedConfig:
    """What main.py would build from `--config C1 --config C2 ... <overrides>` (over DEFAULT_CONFIG), limited
    to `build`.

    A config that does not parse (an unknown key, a value of the wrong type, a missing file) raises UserError
    with the parser's own message, the same words main.py prints after `error:`.
    """
    args = [arg for config in configs for arg in ("--config", str(config))] + list(overrides)
    try:
        cli = ConfigCLI(args, build=build, default_config=DEFAULT_CONFIG, datamodule_class=datamodule_class,
                        exit_on_error=False)
    except ArgumentError as e:
        reason = " ".join(str(e).split()).rstrip(".")  # one paragraph, where the parser indents a second line
        raise UserError(f"Invalid config ({' '.join(args) or DEFAULT_CONFIG}): {reason}. Fix the file or the "
                        f"argument; `uv run python main.py --help` lists every key.") from None
    return LoadedConfig(cli.config, cli.datamodule, cli.model)
