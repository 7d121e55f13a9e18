"""`medkor fit|validate|test`: LightningCLI with runs that survive, and the parser other commands share.

Imported only by the training commands and by `prepare`/`export` (which read the
same configs): it loads Lightning, torch and transformers. `medkor.cli` dispatches
here; the commands that need none of them never import this module.
"""

from __future__ import annotations

import ast
import difflib
import logging
import re
import shlex
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from medkor.callbacks import KorMedMCQAEval, NonFiniteGuard  # noqa: F401  (importable by class name)
from medkor.callbacks.async_checkpoint_io import AsyncAtomicCheckpointIO, CheckpointWriteWatch
from medkor.callbacks.checkpoint_io import CheckpointLoadError, load_checkpoint_file
from medkor.callbacks.finite_guard import NonFiniteLossError
from medkor.callbacks.forgetting import MixtureMetrics
from medkor.callbacks.preemption import Preempted, SaveOnPreemption
from medkor.callbacks.run_report import RunReport
from medkor.data.loader import global_batch_refusal
from medkor.callbacks.run_state import ResumeState
from medkor.checks import ConfigError, check_fit_config, check_run_config, check_run_paths
from medkor.data import MedKorDataModule
from medkor.model import MedGemmaModule
from medkor.run.folders import discard_if_unused, find_last_checkpoint, version_of_checkpoint
from medkor.run.loggers import assign_versions, continue_history, stage_subfolder, versioned_groups
from medkor.run.publish import sweep_leftovers
from medkor.run.report import carried_overrides
from medkor.run.run_lock import RunLock, check_launch_lock

# Lightning's start-up lines that tell a medkor user nothing (the accelerator is in the config)
_NOISE = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:", "Loading `train_dataloader` to estimate",
          "`weights_only` was not set")  # (medkor loads every checkpoint with weights_only=True regardless)
USAGE = ("medkor {0} --config FILE [--config FILE ...] [--model.KEY VALUE] [--data.KEY VALUE] "
         "[--trainer.KEY VALUE] [--ckpt_path PATH]")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_NOISE)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.trainer.connectors.checkpoint_connector"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # validate/test write elsewhere than the checkpoint's run, on purpose
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")


def _literal_values(message: str) -> list[str]:
    """The allowed values of every `typing.Literal[...]` a jsonargparse message names, in order, once each."""
    values: list[str] = []
    for inner in re.findall(r"typing\.Literal\[([^\]]*)\]", message):
        try:
            values.extend(str(v) for v in ast.literal_eval(f"[{inner}]"))
        except (ValueError, SyntaxError):
            continue
    return list(dict.fromkeys(values))


def parser_error_line(message: str) -> str:
    """jsonargparse's multi-line message about one option, as one line naming the option.

    A value outside a fixed set lists the set; a `class_path` that names no subclass of
    what the option takes (a callback that is no `Callback`), or a class that refuses its
    arguments, is named with the reason, never with the whole parsed list around it.
    """
    key = re.search(r'Parser key "([^"]+)"', message)
    given = re.search(r"Given value: (.*)", message)
    expected = re.findall(r"Expected a <class '([\w.]+)'>", message)
    if key:
        value = given.group(1).strip() if given else ""
        plain = value if len(value) <= 80 and not value.startswith(("[", "{", "Namespace(")) else ""
        not_sub = re.search(r"Import path (?:(\S+) )?does not correspond to a subclass of (\w+)", message)
        if not_sub:
            what = not_sub.group(1) or plain or "the class_path"
            return (f"--{key.group(1)}: {what} is not a {not_sub.group(2)}; a class_path there must name a "
                    f"subclass of {not_sub.group(2)}")
        refused = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", message)
        if refused:
            return f"--{key.group(1)}: {refused.group(1)}: {refused.group(2).strip()}"
        allowed = _literal_values(message)
        if allowed:
            null = " or null" if "NoneType" in message else ""
            got = f", got {plain!r}" if plain else ""
            return f"--{key.group(1)}: expected one of {', '.join(allowed)}{null}{got}"
    if key and (given or expected):
        want = " or ".join(dict.fromkeys("null" if t == "NoneType" else t for t in expected)) or "another value"
        got = f", got {given.group(1).strip()!r}" if given else ""
        return f"--{key.group(1)}: expected {want}{got}"
    if key:
        return f"--{key.group(1)}: {' '.join(message[key.end():].split()).lstrip(': ')}"
    lines = [line.strip(" -") for line in message.splitlines() if line.strip()]
    return "; ".join(lines[:3])


def unknown_option_hint(message: str, parsers: Sequence[Any]) -> str:
    """For "unrecognized arguments: --model.learn 0.5": the options meant, as "; did you mean ...?" (or "")."""
    found = re.search(r"unrecognized arguments: (.*)", message)
    if not found:
        return ""
    known = sorted({o for p in parsers for a in p._actions for o in a.option_strings if o.startswith("--")})
    prefixed, similar = [], []
    for arg in found.group(1).split():
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or name in known:
            continue
        longer = [o for o in known if o.startswith(name)][:3]
        prefixed.extend(longer)
        similar.extend([] if longer else difflib.get_close_matches(name, known, n=1, cutoff=0.8))
    meant = " or ".join(dict.fromkeys(prefixed + similar))
    if not meant:
        return ""
    return f"; {'options are never abbreviated: ' if prefixed else ''}did you mean {meant}?"


def tokenizer_path_for(model_name_or_path: str, tokenizer_path: Optional[str]) -> str:
    """The tokenizer the model trains with: its own unless an extended one is named."""
    return tokenizer_path or model_name_or_path


class MedKorCLI(LightningCLI):
    """LightningCLI with the model's tokenizer linked into the data module, and runs that survive.

    Every Trainer gets atomic checkpoint files written beside training (`AsyncAtomicCheckpointIO`,
    its failures stopping the run through `CheckpointWriteWatch`), random state in
    its checkpoints (`ResumeState`) and a checkpoint on SIGTERM (`SaveOnPreemption`).
    Each run claims its own `version_N`; `fit --ckpt_path` (a file in a run's
    `checkpoints/`, or `last`) continues in the folder the checkpoint came from.
    """

    claimed: list[Path] = []  # run folders this process created (removed again if the start fails)
    made_roots: list[Path] = []  # folders above them that this process created (removed again if left empty)
    locks: list[RunLock] = []  # run folders this process writes into, locked until the run ends
    command: str = "medkor"  # the command line, recorded in the lock
    argv: list[str] = []  # its arguments: the suggested next commands repeat its --model.*/--data.* options
    parsers: list[LightningArgumentParser] = []

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("exit_on_error", False)  # one line (run_cli), not an 80-line usage dump
        kwargs.setdefault("allow_abbrev", False)  # `--model.learn` must not quietly mean --model.learning_rate
        parser = super().init_parser(**kwargs)
        MedKorCLI.parsers.append(parser)  # their options name the one meant when an unknown one is given
        return parser

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser.usage = USAGE.format(subcommand)
        # medkor's own options first: the trainer's 48 come after the model's and the data's
        groups = parser._action_groups
        ours = [g for g in groups if any(a.dest.startswith(("model.", "data.")) for a in g._group_actions)]
        trainer = next((i for i, g in enumerate(groups) if any(a.dest.startswith("trainer.") for a in g._group_actions)), None)
        if trainer is not None:
            rest = [g for g in groups if g not in ours]
            rest[trainer:trainer] = ours
            groups[:] = rest
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--cpu_threads", type=Optional[int], default=None,
            help="torch threads for CPU work (null: torch's default, one per core). A tiny model runs as fast on "
            "one thread and does not slow down when other processes share the cores; the demo uses 1.",
        )
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
        except CheckpointLoadError as err:  # a load error (exit 1), as when the trainer itself loads the file
            raise CheckpointLoadError(f"--ckpt_path: {err}") from err
        # remote code runs only when the config or the command line asks for it, never because a checkpoint says so
        hparams = {k: v for k, v in hparams.items() if k not in ("_instantiator", "trust_remote_code")}
        if hparams:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

    def _set_seed(self) -> None:
        pass  # seeded in before_instantiate_classes, after the checks: no "Seed set" line before an error

    def before_instantiate_classes(self) -> None:
        config = self._config_of_subcommand()
        check_run_config(config)
        if self.subcommand == "fit":
            check_fit_config(config)  # before a run folder is made for a run that trains nothing
        check_run_paths(config)
        threads = config.get("cpu_threads")
        if threads:
            torch.set_num_threads(int(threads))
        if self.subcommand in ("validate", "test") and not config.get("ckpt_path"):
            model = config.get("model")
            path = getattr(model, "init_args", model).get("model_name_or_path") if model is not None else None
            rank_zero_info(f"[medkor] no --ckpt_path: {self.subcommand} scores the model as loaded from "
                           f"model_name_or_path ({path}), untrained by this run")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError, MisconfigurationException) as err:
            # the constructors only check their arguments (nothing loads before configure_model)
            raise ConfigError(str(err)) from err
        super()._set_seed()  # after the checks (no "Seed set" line before an error), before any weight exists

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: atomic, off the step
            trainer.strategy.checkpoint_io = AsyncAtomicCheckpointIO()
        present = {type(c) for c in trainer.callbacks}
        configs = [str(c) for c in (self._config_of_subcommand().get("config") or [])]
        # the watch first: at the fit's end every checkpoint is on disk before other callbacks look
        trainer.callbacks[:0] = [cb() for cb in (CheckpointWriteWatch, ResumeState, SaveOnPreemption, MixtureMetrics)
                                 if cb not in present]
        if RunReport not in present:
            # last: its closing lines come after the progress bar's
            trainer.callbacks.append(RunReport(configs, carried_overrides(MedKorCLI.argv)))
        return trainer

    def _config_of_subcommand(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_fit(self) -> None:
        self._settle_run_folder(resume=True)

    def before_validate(self) -> None:
        self._settle_run_folder(resume=False)

    def before_test(self) -> None:
        self._settle_run_folder(resume=False)

    def _settle_run_folder(self, resume: bool) -> None:
        """Pick the run folder on global rank zero: the checkpoint's when resuming, else a new one."""
        trainer, config = self.trainer, self.config_init[self.subcommand]
        if not resume:
            stage_subfolder(trainer.loggers, self.subcommand)  # <name>/validate/version_N: never mixed with runs
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
            check_launch_lock()  # the lock rank zero took is still this launch's
            return  # only rank zero writes logs; checkpoint folders are broadcast from it
        for log_root in groups:  # e.g. lightning_logs/demo/validate, made by the claim below when missing
            MedKorCLI.made_roots.extend(p for p in (log_root, *log_root.parents) if not p.exists())
        chosen = assign_versions(trainer.loggers, keep)
        MedKorCLI.claimed.extend(root / f"version_{n}" for root, n in chosen.items() if (root, n) != keep)
        for folder in [root / f"version_{n}" for root, n in chosen.items()]:
            # one writer per run folder, taken before any of its files changes (a second resume stops here)
            folder.mkdir(parents=True, exist_ok=True)  # (a logger's fixed version may not exist yet)
            fresh = not any(folder.iterdir())
            lock = RunLock(folder, MedKorCLI.command)
            lock.acquire(say=lambda line: rank_zero_info(f"[medkor] {line}"))
            MedKorCLI.locks.append(lock)
            if fresh:  # the CSV logger's "not empty, files will be deleted" would be about the lock alone
                warnings.filterwarnings("ignore", message=re.escape(f"Experiment logs directory {folder} exists"))
        if keep is not None:
            # temporary checkpoint files of the killed attempt (the lock makes this the folder's only writer)
            swept = sweep_leftovers(root / f"version_{keep[1]}" / "checkpoints")
            # the run's own checkpoints are expected there on a resume: Lightning's "not empty" warning says nothing
            own = {str(root / f"version_{keep[1]}" / "checkpoints"), str((root / f"version_{keep[1]}").resolve() / "checkpoints")}
            warnings.filterwarnings("ignore", message="Checkpoint directory (" + "|".join(map(re.escape, sorted(own)))
                                    + r") exists and is not empty")
            if swept:
                rank_zero_info(f"[medkor] removed {len(swept)} temporary file(s) of interrupted checkpoint writes: "
                               + ", ".join(p.name for p in swept[:3]) + (" ..." if len(swept) > 3 else ""))
            step = int(checkpoint.get("global_step", 0)) if checkpoint is not None else None
            dropped = continue_history(trainer.loggers, step)
            note = f"; {dropped} metrics rows logged after step {step} by the interrupted attempt dropped" if dropped else ""
            rank_zero_info(f"[medkor] continuing run {root / f'version_{keep[1]}'} from step {step}{note}")

    def _check_data_position(self, path: Path, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose loader position needs another global batch (batch x devices x accumulation)."""
        state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        for saved in state.get("combined_loader", []):
            # the position is global: any number of devices continues it, with the same global batch
            refusal = global_batch_refusal(saved, self.datamodule.batch_size, self.trainer.world_size,
                                           self.trainer.accumulate_grad_batches)
            if refusal:
                raise ConfigError(f"--ckpt_path {path}: {refusal}")


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


def run_cli(args: Sequence[str], from_argv: bool = False) -> MedKorCLI:
    """Run `medkor fit|validate|test ARGS`; a bad option value raises one `ConfigError` line."""
    _quiet_lightning()
    MedKorCLI.claimed, MedKorCLI.locks, MedKorCLI.parsers, MedKorCLI.made_roots = [], [], [], []
    MedKorCLI.command = shlex.join(["medkor", *args])
    MedKorCLI.argv = list(args)
    try:
        return MedKorCLI(
            MedGemmaModule,
            MedKorDataModule,
            args=None if from_argv else list(args),  # None: LightningCLI reads sys.argv itself
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except ArgumentError as err:
        hint = unknown_option_hint(str(err), MedKorCLI.parsers)
        raise ConfigError(f"{parser_error_line(str(err))}{hint} (`medkor {(list(args) or ['fit'])[0]} --help`)") from err
    except BaseException:
        _release_locks()
        for folder in MedKorCLI.claimed:  # a start that failed leaves no near-empty run folder behind
            discard_if_unused(folder)
        for folder in sorted(set(MedKorCLI.made_roots), key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()  # only if empty: what another run or the user put there stays
            except OSError:
                pass
        raise
    finally:
        _release_locks()


def _release_locks() -> None:
    while MedKorCLI.locks:
        MedKorCLI.locks.pop().release()


def parse_run_config(args: Sequence[str]) -> Any:
    """The parsed config of `medkor fit ARGS` without building model, data or Trainer.

    Commands such as `prepare` and `export` accept the same `--config` files and
    `--section.key value` overrides as `fit`; this gives them the same view of it.
    """
    MedKorCLI.parsers = []
    try:
        cli = _ParseOnlyCLI(
            MedGemmaModule,
            MedKorDataModule,
            run=False,
            args=list(args),
            save_config_callback=None,
            auto_configure_optimizers=False,
        )
    except ArgumentError as err:
        raise ConfigError(parser_error_line(str(err)) + unknown_option_hint(str(err), MedKorCLI.parsers)) from err
    return cli.config
