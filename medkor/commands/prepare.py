"""`medkor prepare --config FILE [overrides]`: build or find the caches of a run config.

Reads the same config files and `--section.key value` overrides as `medkor fit`,
loads neither a model nor a GPU, and prints one JSON object per split, one per line:
{"split", "status": "hit"|"built", "path", "key", "rows", "tokens", "seconds"}.

The data options are read with PyYAML against `MedKorDataModule`'s option list
(names, defaults and types read from its source), so a hit answers without importing
Lightning or torch; arguments this reading does not follow exactly (another data
class, `--print_config`, a value of another type) go through the full parse that
`fit` uses.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

USAGE = """usage: medkor prepare --config FILE [--stage fit|validate|test] [--data.KEY VALUE ...]

Build (or find) the tokenized caches that `medkor fit` (or `validate`, `test` with
--stage) with the same arguments would use, without loading a model. Prints one JSON
line per split; logs go to stderr. --stage validate needs no training data.
Every `--data.*` option of `medkor fit` is accepted, e.g. --data.overwrite_cache true.
Launched as several ranks (torchrun, srun, a SLURM array), the ranks split the work:
each builds its share of the pieces and rank 0 assembles (docs/distributed.md).
"""


def _data_args(config: Any) -> dict[str, Any]:
    data = config.data
    data = data.as_dict() if hasattr(data, "as_dict") else dict(data)
    return data.get("init_args", data)  # subclass mode nests the arguments


_TYPES: dict[str, Any] = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list": list}


def _section(config: dict[str, Any], name: str) -> Optional[dict[str, Any]]:
    """A config section's arguments; None for a `class_path` form (the full parse judges it) or a non-mapping."""
    section = config.get(name)
    if section is None:
        return {}
    return dict(section) if isinstance(section, dict) and "class_path" not in section else None


def _fits(value: Any, annotation: str) -> bool:
    """Whether a YAML value has the annotated type (types not read here are left to the plan's checks)."""
    optional = annotation.startswith("Optional[")
    inner = annotation[len("Optional["):-1] if optional else annotation
    if value is None:
        return optional
    wanted = _TYPES.get(inner.split("[", 1)[0])
    if wanted is None:
        return True
    return isinstance(value, wanted) and not (isinstance(value, bool) and inner.split("[", 1)[0] != "bool")


def light_data_options(argv: list[str]) -> Optional[dict[str, Any]]:
    """The `MedKorDataModule` arguments `medkor fit ARGV` would build, read without Lightning; None when the
    arguments need the full parse (the data options are then read by jsonargparse)."""
    import yaml

    from medkor.checks import quick_config
    from medkor.commands.options_help import class_annotations, class_defaults, datamodule_source

    config = quick_config(argv)
    if config is None or any(a.startswith("--data.") and a.split("=", 1)[0].count(".") > 1 for a in argv):
        return None
    data, model = _section(config, "data"), _section(config, "model")
    if data is None or model is None or "tokenizer_path" in data:
        return None  # data.tokenizer_path is linked from the model's: giving it is the full parse's error
    # a dict-valued option in several files: jsonargparse replaces, the quick reading merges
    seen: dict[str, int] = {}
    for path in config.get("config", []):
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        section = (_section(loaded, "data") or {}) if isinstance(loaded, dict) else {}
        for name, value in section.items():
            seen[name] = seen.get(name, 0) + isinstance(value, dict)
    if any(count > 1 for count in seen.values()):
        return None
    source = datamodule_source()
    annotations = class_annotations(source, "MedKorDataModule")
    options = class_defaults(source, "MedKorDataModule")
    if set(data) - set(annotations):
        return None  # an unknown option: the full parse names it
    for name, value in data.items():
        if not _fits(value, annotations[name]):
            return None
        options[name] = float(value) if "float" in annotations[name] and isinstance(value, int) else value
    options["tokenizer_path"] = model.get("tokenizer_path") or model.get("model_name_or_path")
    return options if isinstance(options["tokenizer_path"], str) else None


STAGES = ("fit", "validate", "test")


def _stage(argv: list[str]) -> tuple[str, list[str]]:
    """`--stage NAME` (or `--stage=NAME`) taken out of the arguments; `fit` without it."""
    rest, stage, index = [], "fit", 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--stage" or arg.startswith("--stage="):
            if "=" in arg:
                stage = arg.split("=", 1)[1]
            elif index + 1 < len(argv):
                index += 1
                stage = argv[index]
            else:
                stage = ""
        else:
            rest.append(arg)
        index += 1
    return stage, rest


def _prepare(plan: Any, started: float, stage: str = "fit") -> None:
    """Find or build the caches of `stage`; launched as several ranks, build this rank's share of the pieces."""
    from medkor.data.plan import describe, ensure_log_handler
    from medkor.data.ranks import launch_share, prepare_share

    ensure_log_handler()
    log = logging.getLogger("medkor.data")
    share = launch_share(per_node=plan.prepare_data_per_node)
    if share.world == 1:
        results, _ = plan.prepare(stage, log)
    else:
        log.info("rank %d of %d (%s): tokenizing its share of the pieces (by size) and packing their row "
                 "segments%s", share.rank, share.world, share.launcher,
                 "; then assembling the splits once every rank is done" if share.rank == 0 else "")
        if share.rank == 0 and stage == "fit":
            plan.check_leaks(log)
        built, shared = prepare_share(plan.requests(stage), share, plan.num_proc, plan.lock_timeout, log, started)
        if shared is None:
            print(json.dumps({"rank": share.rank, "world": share.world, "pieces_built": built,
                              "seconds": round(time.monotonic() - started, 3)}), flush=True)
            return
        results = shared
        log.info("rank 0 tokenized %d piece(s) itself before assembling (the lines below count the pieces "
                 "each split found tokenized as reused)", built)
        for result in results:
            log.info(describe(result))
    for result in results:
        print(json.dumps(result.summary(), ensure_ascii=False), flush=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            print(USAGE, file=sys.stderr)
            return 2
        from medkor.commands.options_help import data_options_help

        print(USAGE)
        print("The tokenizer is the model's: --model.tokenizer_path (or --model.model_name_or_path).\n")
        print("data options (a config's `data:` section, or on the command line):")
        print(data_options_help())
        return 0
    started = time.monotonic()
    from medkor.checks import ConfigError, check_quickly, check_run_config
    from medkor.cli import one_line

    stage, argv = _stage(argv)
    if stage not in STAGES:
        print(f"medkor prepare: error: --stage {stage!r}: choose one of {', '.join(STAGES)}", file=sys.stderr)
        return 2

    try:  # the config files and plain values, before Lightning is imported
        check_quickly(argv, paths=False)
        options = light_data_options(argv)
    except ConfigError as err:
        print(f"medkor prepare: error: {one_line(err)}", file=sys.stderr)
        return 2
    from medkor.data.cache import CacheError
    from medkor.data.lock import LockTimeout
    from medkor.data.ranks import RankError
    from medkor.data.sources import DataError

    try:
        if options is not None:
            from medkor.data.plan import DataPlan

            _prepare(DataPlan.from_options(options), started, stage)
            return 0
        from medkor.data import MedKorDataModule
        from medkor.lightning_cli import parse_run_config

        config = parse_run_config(argv)
        check_run_config(config)
        _prepare(MedKorDataModule(**_data_args(config)).plan, started, stage)
    except ConfigError as err:
        print(f"medkor prepare: error: {one_line(err)}", file=sys.stderr)
        return 2
    except RankError as err:
        print(f"medkor prepare: error: {one_line(err)}", file=sys.stderr)
        return 2
    except (DataError, CacheError, LockTimeout, ValueError, OSError, RuntimeError) as err:
        print(f"medkor prepare: error: {one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
