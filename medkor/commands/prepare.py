"""`medkor prepare --config FILE [overrides]`: build or find the caches of a run config.

Reads the same config files and `--section.key value` overrides as `medkor fit`,
loads neither a model nor a GPU, and prints one JSON object per split, one per line:
{"split", "status": "hit"|"built", "path", "key", "rows", "tokens", "seconds"}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

USAGE = """usage: medkor prepare --config FILE [--data.KEY VALUE ...]

Build (or find) the tokenized caches that `medkor fit` with the same arguments would
use, without loading a model. Prints one JSON line per split; logs go to stderr.
Every `--data.*` option of `medkor fit` is accepted, e.g. --data.overwrite_cache true.
"""


def _data_args(config: Any) -> dict[str, Any]:
    data = config.data
    data = data.as_dict() if hasattr(data, "as_dict") else dict(data)
    return data.get("init_args", data)  # subclass mode nests the arguments


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
    from medkor.checks import ConfigError, check_quickly, check_run_config
    from medkor.cli import one_line

    try:  # the config files and plain values, before Lightning is imported
        check_quickly(argv, paths=False)
    except ConfigError as err:
        print(f"medkor prepare: error: {one_line(err)}", file=sys.stderr)
        return 2
    from medkor.data import MedKorDataModule
    from medkor.data.cache import CacheError
    from medkor.data.sources import DataError
    from medkor.lightning_cli import parse_run_config

    try:
        config = parse_run_config(argv)
        check_run_config(config)
        module = MedKorDataModule(**_data_args(config))
        for result in module.prepare_caches():
            print(json.dumps(result.summary(), ensure_ascii=False), flush=True)
    except ConfigError as err:
        print(f"medkor prepare: error: {one_line(err)}", file=sys.stderr)
        return 2
    except (DataError, CacheError, ValueError, OSError, RuntimeError) as err:
        print(f"medkor prepare: error: {one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
