"""The `medkor` command: LightningCLI for training, plain commands for the rest.

`medkor fit|validate|test` are LightningCLI subcommands driven by YAML files in
`configs/`. The commands that train nothing (`prepare`, `cache`, `extend-vocab`,
`export`, `plot`) live in `medkor.commands` and are dispatched before LightningCLI
sees the arguments, so they never build a Trainer or load a model they do not need.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Optional, Sequence

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger

from medkor.callbacks import KorMedMCQAEval  # noqa: F401  (importable by class_path)
from medkor.data import MedKorDataModule
from medkor.model import MedGemmaModule

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("medkor.commands.prepare", "Build or find the tokenized caches of a config, without a GPU or a model."),
    "cache": ("medkor.commands.cache", "List, verify or remove tokenized caches."),
    "extend-vocab": ("medkor.commands.extend_vocab", "Extend a tokenizer with Korean (medical) tokens."),
    "export": ("medkor.commands.export", "Write a Hugging Face folder from a config and an optional checkpoint."),
    "plot": ("medkor.commands.plot", "Plot losses and KorMedMCQA accuracy of a run folder."),
}
TRAINING = {
    "fit": "Train: KorMedMCQA baseline, then epochs with validation and evaluation.",
    "validate": "Validation loss and KorMedMCQA accuracy of a model or checkpoint.",
    "test": "Test loss and KorMedMCQA accuracy of a model or checkpoint.",
}


def tokenizer_path_for(model_name_or_path: str, tokenizer_path: Optional[str]) -> str:
    """The tokenizer the model trains with: its own unless an extended one is named."""
    return tokenizer_path or model_name_or_path


def share_run_folder(loggers: Sequence[Logger]) -> None:
    """Put loggers that write under the same root and name into one `version_N` folder.

    CSV and TensorBoard loggers each pick the next free version on their own, so
    together they would split one run over two folders; the first one decides.
    """
    chosen: dict[tuple[str, str], Any] = {}
    for logger in loggers:
        if not hasattr(logger, "_version") or logger.root_dir is None:
            continue
        key = (str(logger.root_dir), str(logger.name))
        if key in chosen:
            if logger._version is None:
                logger._version = chosen[key]
        else:
            chosen[key] = logger.version


class MedKorCLI(LightningCLI):
    """LightningCLI with the model's tokenizer linked into the data module."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        share_run_folder(trainer.loggers)
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            ("model.model_name_or_path", "model.tokenizer_path"),
            "data.tokenizer_path",
            compute_fn=tokenizer_path_for,
        )


class _ParseOnlyCLI(MedKorCLI):
    """Parses a run config (files, overrides, links) and instantiates nothing."""

    def instantiate_classes(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass  # parsing a config must not seed anything

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.config = parser.parse_args(args)  # args come from a command, not sys.argv


def parse_run_config(args: Sequence[str]) -> Any:
    """The parsed config of `medkor fit ARGS` without building model, data or Trainer.

    Commands such as `prepare` and `export` accept the same `--config` files and
    `--section.key value` overrides as `fit`; this gives them the same view of it.
    """
    cli = _ParseOnlyCLI(
        MedGemmaModule,
        MedKorDataModule,
        run=False,
        args=list(args),
        save_config_callback=None,
        auto_configure_optimizers=False,
    )
    return cli.config


def _print_help() -> None:
    print("usage: medkor COMMAND [options]\n")
    print("Adapt MedGemma (Gemma 3) to Korean medicine.\n\ntraining (LightningCLI, `medkor COMMAND --help`):")
    for name, text in TRAINING.items():
        print(f"  {name:<13} {text}")
    print("\nother commands (`medkor COMMAND --help`):")
    for name, (_, text) in COMMANDS.items():
        print(f"  {name:<13} {text}")
    print("\nexample: medkor fit --config configs/demo.yaml")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        _print_help()
        return
    if args[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[args[0]][0])
        try:
            code = module.main(args[1:]) or 0
        except KeyboardInterrupt:  # Ctrl-C: the commands clean up on the way out; no traceback
            print(f"medkor {args[0]}: interrupted", file=sys.stderr)
            code = 130
        sys.exit(code)
    MedKorCLI(
        MedGemmaModule,
        MedKorDataModule,
        args=None if argv is None else args,  # None: LightningCLI reads sys.argv itself
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
