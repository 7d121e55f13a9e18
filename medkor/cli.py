"""The `medkor` command: LightningCLI for training, plain commands for the rest.

`medkor fit|validate|test` are LightningCLI subcommands driven by YAML files in
`configs/`. The commands that train nothing (`prepare`, `cache`, `extend-vocab`,
`export`, `plot`) live in `medkor.commands` and are dispatched before LightningCLI
sees the arguments, so they never build a Trainer or load a model they do not need.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from medkor.callbacks import KorMedMCQAEval, NonFiniteGuard  # noqa: F401  (importable by class name)
from medkor.callbacks.checkpoint_io import AtomicCheckpointIO, CheckpointLoadError, load_checkpoint_file
from medkor.callbacks.finite_guard import NonFiniteLossError
from medkor.callbacks.preemption import Preempted, SaveOnPreemption
from medkor.callbacks.run_state import ResumeState
from medkor.checks import ConfigError, check_run_config
from medkor.data import MedKorDataModule
from medkor.model import MedGemmaModule
from medkor.run.folders import find_last_checkpoint, version_of_checkpoint
from medkor.run.loggers import assign_versions, continue_history, versioned_groups

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


class MedKorCLI(LightningCLI):
    """LightningCLI with the model's tokenizer linked into the data module, and runs that survive.

    Every Trainer gets atomic checkpoint files (`AtomicCheckpointIO`), random state in
    its checkpoints (`ResumeState`) and a checkpoint on SIGTERM (`SaveOnPreemption`).
    Each run claims its own `version_N`; `fit --ckpt_path` (a file in a run's
    `checkpoints/`, or `last`) continues in the folder the checkpoint came from.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            ("model.model_name_or_path", "model.tokenizer_path"),
            "data.tokenizer_path",
            compute_fn=tokenizer_path_for,
        )

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the checkpoint's hyperparameters into the config here; read them
        # memory-mapped and safely, with a one-line error for a bad file.
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        try:
            hparams = load_checkpoint_file(ckpt_path, mmap=True).get("hyper_parameters", {})
        except CheckpointLoadError as err:
            raise ConfigError(f"--ckpt_path: {err}") from err
        hparams = {k: v for k, v in hparams.items() if k != "_instantiator"}
        if hparams:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        check_run_config(self.config[self.subcommand] if self.subcommand else self.config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: make it atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        present = {type(c) for c in trainer.callbacks}
        trainer.callbacks[:0] = [cb() for cb in (ResumeState, SaveOnPreemption) if cb not in present]
        return trainer

    def before_fit(self) -> None:
        self._settle_run_folder(resume=True)

    def before_validate(self) -> None:
        self._settle_run_folder(resume=False)

    def before_test(self) -> None:
        self._settle_run_folder(resume=False)

    def _settle_run_folder(self, resume: bool) -> None:
        """Pick the run folder on global rank zero: the checkpoint's when resuming, else a new one."""
        trainer, config = self.trainer, self.config_init[self.subcommand]
        groups = versioned_groups(trainer.loggers)
        if not groups:
            return
        root = Path(trainer.loggers[0].root_dir) if trainer.loggers[0] in sum(groups.values(), []) else None
        ckpt = config.get("ckpt_path")
        keep = None
        if resume and ckpt == "last" and root is not None:
            found = find_last_checkpoint(root)
            config["ckpt_path"] = str(found) if found else None
            rank_zero_info(f"[medkor] resuming from {found}" if found else
                           f"[medkor] --ckpt_path last: no last checkpoint under {root}; starting a new run")
            ckpt = config["ckpt_path"]
        if resume and ckpt and root is not None and Path(ckpt).exists():
            version = version_of_checkpoint(Path(ckpt), root)
            if version is not None:
                keep = (root, version)
        # one memory-mapped read of a single-file checkpoint (a sharded one is a folder: no step known)
        checkpoint = load_checkpoint_file(ckpt, mmap=True) if resume and ckpt and Path(ckpt).is_file() else None
        if checkpoint is not None:
            self._check_data_position(Path(ckpt), checkpoint)  # before anything in the run folder changes
        if not trainer.is_global_zero:
            return  # only rank zero writes logs; checkpoint folders are broadcast from it
        assign_versions(trainer.loggers, keep)
        if keep is not None:
            step = int(checkpoint.get("global_step", 0)) if checkpoint is not None else None
            dropped = continue_history(trainer.loggers, step)
            note = f"; {dropped} metrics rows logged after step {step} by the interrupted attempt dropped" if dropped else ""
            rank_zero_info(f"[medkor] continuing run {root / f'version_{keep[1]}'} from step {step}{note}")

    def _check_data_position(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose loader position needs another batch size or rank count."""
        state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        for saved in state.get("combined_loader", []):
            want = {"batch_size": self.datamodule.batch_size, "num_replicas": self.trainer.world_size}
            changed = [f"{k} {saved.get(k)} -> {v}" for k, v in want.items() if saved.get(k) not in (None, v)]
            if changed:
                raise ConfigError(
                    f"--ckpt_path {path}: its position in the training data does not fit this run "
                    f"({', '.join(changed)}); resume with the same data.batch_size and number of devices"
                )


class _ParseOnlyCLI(MedKorCLI):
    """Parses a run config (files, overrides, links) and instantiates nothing."""

    def instantiate_classes(self) -> None:
        pass

    def before_instantiate_classes(self) -> None:
        pass  # the command checks what it uses (`prepare`: check_run_config); `export` ignores data

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
    command = args[0]
    try:
        MedKorCLI(
            MedGemmaModule,
            MedKorDataModule,
            args=None if argv is None else args,  # None: LightningCLI reads sys.argv itself
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except ConfigError as err:  # found before any model or data was loaded
        print(f"medkor {command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as err:
        print(f"medkor {command}: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except Preempted as err:
        print(f"medkor {command}: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
