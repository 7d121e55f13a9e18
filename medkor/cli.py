"""The `medkor` command: dispatch, help, and one line per error.

`medkor fit|validate|test` run LightningCLI (`medkor.lightning_cli`). The commands
that train nothing (`prepare`, `cache`, `extend-vocab`, `export`, `plot`) live in
`medkor.commands` and are dispatched before anything heavy is imported, so
`medkor --help`, `medkor cache ls` or `medkor plot` answer without loading
Lightning or torch.

medkor's own errors (bad paths, data, options, checkpoints) print as one
`medkor COMMAND: error: ...` line and a non-zero exit; `--debug` (or
`MEDKOR_DEBUG=1`) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional, Sequence

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("medkor.commands.prepare", "Build or find the tokenized caches of a config, without a GPU or a model."),
    "cache": ("medkor.commands.cache", "List, verify or remove tokenized caches."),
    "extend-vocab": ("medkor.commands.extend_vocab", "Extend a tokenizer with Korean (medical) tokens."),
    "export": ("medkor.commands.export", "Write a Hugging Face folder from a config and an optional checkpoint."),
    "plot": ("medkor.commands.plot", "Plot losses and KorMedMCQA accuracy of a run folder."),
    "plan": ("medkor.commands.plan", "Parameters and predicted memory per device of a config, without weights."),
}
TRAINING = {
    "fit": "Train: KorMedMCQA baseline, then epochs with validation and evaluation.",
    "validate": "Validation loss and KorMedMCQA accuracy of a model or checkpoint.",
    "test": "Test loss and KorMedMCQA accuracy of a model or checkpoint.",
}
DEBUG_ENV = "MEDKOR_DEBUG"


def _print_help() -> None:
    print("usage: medkor COMMAND [options] [--debug]\n")
    print("Adapt MedGemma (Gemma 3) to Korean medicine.\n\ntraining (LightningCLI, `medkor COMMAND --help`):")
    for name, text in TRAINING.items():
        print(f"  {name:<13} {text}")
    print("\nother commands (`medkor COMMAND --help`):")
    for name, (_, text) in COMMANDS.items():
        print(f"  {name:<13} {text}")
    print("\n--debug (or MEDKOR_DEBUG=1) prints the traceback of an error instead of its one line.")
    print("example: medkor fit --config configs/demo.yaml")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are medkor's own messages about the user's input: printed as one line.

    Imported here, when an error is being handled, so that a start imports none of them.
    """
    from medkor.callbacks.async_checkpoint_io import CheckpointSaveError
    from medkor.callbacks.checkpoint_io import CheckpointLoadError
    from medkor.checks import ConfigError
    from medkor.data.cache import CacheError
    from medkor.data.sources import DataError
    from medkor.eval.questions import QuestionError
    from medkor.model.embeddings import TokenizerMismatchError
    from medkor.model.loading import WeightLoadingError
    from medkor.vocab.files import TokenizerFileError

    return (ConfigError, DataError, CacheError, QuestionError, TokenizerMismatchError, WeightLoadingError,
            CheckpointLoadError, CheckpointSaveError, TokenizerFileError)


def _exit_code(err: BaseException) -> int:
    from medkor.checks import ConfigError

    return 2 if isinstance(err, ConfigError) else 1


def one_line(text: object) -> str:
    """A message on one line, as every `medkor COMMAND: error:` prints it."""
    return " ".join(str(text).split())


def _quick_check(command: str, args: list[str]) -> Optional[int]:
    """Check paths and values from the YAML files alone, before Lightning loads (seconds saved per mistake)."""
    from medkor.checks import ConfigError, check_quickly

    if len(args) == 1:
        print(f"medkor {command}: error: give a run config, e.g. medkor {command} --config configs/demo.yaml "
              f"(`medkor {command} --help` lists every option)", file=sys.stderr)
        return 2
    if os.environ.get(DEBUG_ENV):
        return None
    try:
        check_quickly(args[1:], command=command)
    except ConfigError as err:
        print(f"medkor {command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return None


def _run_training(command: str, args: list[str], from_argv: bool) -> int:
    code = _quick_check(command, args)
    if code is not None:
        return code
    from medkor.lightning_cli import run_cli

    try:
        run_cli(args, from_argv=from_argv)
    except KeyboardInterrupt:
        print(f"medkor {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - sorted below: medkor's own messages, or a real bug (traceback)
        from medkor.callbacks.finite_guard import NonFiniteLossError
        from medkor.callbacks.preemption import Preempted

        if isinstance(err, Preempted):
            print(f"medkor {command}: {err}", file=sys.stderr)
            return err.exit_code
        if isinstance(err, NonFiniteLossError):
            print(f"medkor {command}: stopped: {one_line(err)}", file=sys.stderr)
            return 1
        if os.environ.get(DEBUG_ENV) or not isinstance(err, user_errors()):
            raise
        print(f"medkor {command}: error: {one_line(err)}", file=sys.stderr)
        return _exit_code(err)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        args.remove("--debug")
        os.environ[DEBUG_ENV] = "1"
        if argv is None:
            sys.argv = [sys.argv[0], *args]  # LightningCLI reads sys.argv itself
    if not args or args[0] in ("-h", "--help"):
        _print_help()
        return
    command = args[0]
    if command in COMMANDS:
        module = importlib.import_module(COMMANDS[command][0])
        try:
            code = module.main(args[1:]) or 0
        except KeyboardInterrupt:  # Ctrl-C: the commands clean up on the way out; no traceback
            print(f"medkor {command}: interrupted", file=sys.stderr)
            code = 130
        except BrokenPipeError:  # `medkor cache ls DIR | head`: the reader has gone; nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 0
        sys.exit(code)
    if command not in TRAINING:
        print(f"medkor: error: unknown command {command!r}; choose one of "
              f"{', '.join([*TRAINING, *COMMANDS])} (`medkor --help`)", file=sys.stderr)
        sys.exit(2)
    sys.exit(_run_training(command, args, from_argv=argv is None))


if __name__ == "__main__":
    main()
