"""Checks of a run config that cost nothing, made before any model or data is loaded.

Each failure is a `ConfigError` naming the option, the value and what to use; the
`medkor` command prints it as one line and exits 2. Without these checks a bad value
surfaces minutes later (after the model has loaded, or as an out-of-memory error).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Optional


class ConfigError(ValueError):
    """A config value that cannot work; the message names the option."""


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """`config`'s value at a dotted `key` (dicts, namespaces or objects), or `default` where it is unset."""
    node = config
    for part in key.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def _model_init(config: Any) -> Any:
    model = config_value(config, "model")
    return config_value(model, "init_args", model) if model is not None and config_value(model, "class_path") else model


def model_config_json(model_name_or_path: str) -> Optional[dict[str, Any]]:
    """The checkpoint's config.json when it is on disk (a folder, or a hub id already cached); else None."""
    folder = Path(model_name_or_path)
    path: Optional[Path] = folder / "config.json" if folder.is_dir() else None
    if path is None and "/" in model_name_or_path and not folder.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_name_or_path, "config.json")
            path = Path(cached) if isinstance(cached, str) else None
        except Exception:  # an unusual hub id or cache layout: the loader will say more
            path = None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def max_positions(model_config: dict[str, Any]) -> Optional[int]:
    """`max_position_embeddings` of the text model (multimodal Gemma 3 nests it in `text_config`)."""
    text = model_config.get("text_config") or {}
    value = text.get("max_position_embeddings", model_config.get("max_position_embeddings"))
    return int(value) if value else None


def _at_least(config: Any, key: str, low: float, hint: str, allow_none: bool = True) -> None:
    value = config_value(config, key)
    if value is None:
        if allow_none:
            return
        raise ConfigError(f"{key} must be set ({hint})")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number >= {low:g}, got {value!r} ({hint})")
    if value < low:
        raise ConfigError(f"{key} must be >= {low:g}, got {value!r} ({hint})")


# Lightning's `Trainer(precision=...)` values (tests/test_cli.py holds this to Lightning's own list)
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "64", "32", "16", "bf16")


def _check_precision(config: Any) -> None:
    value = config_value(config, "trainer.precision")
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and str(value) in PRECISIONS):
        return
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ConfigError(f"trainer.precision {value!r} is not a precision: use one of {', '.join(PRECISIONS)}")


def check_fit_config(config: Any) -> None:
    """Raise `ConfigError` for a `fit` config that would train nothing (and leave an empty run folder)."""
    for key, hint in (("trainer.max_epochs", "use 1 or more, or -1 for no limit (max_steps then ends the run)"),
                      ("trainer.max_steps", "use 1 or more, or -1 for no limit"),
                      ("trainer.limit_train_batches", "use a fraction above 0 or a number of batches of 1 or more")):
        value = config_value(config, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            raise ConfigError(f"{key} {value!r} trains nothing: {hint}")


def check_run_config(config: Any) -> None:
    """Raise `ConfigError` for the first value of a `fit`/`validate`/`test` config that cannot work."""
    _check_precision(config)
    _at_least(config, "trainer.accumulate_grad_batches", 1, "micro-batches per optimizer step; 1 = no accumulation")
    _at_least(config, "trainer.max_epochs", -1, "-1 = no limit")
    _at_least(config, "trainer.max_steps", -1, "-1 = no limit")
    if config_value(config, "trainer.max_epochs") == -1 and config_value(config, "trainer.max_steps", -1) == -1:
        # Lightning would train forever and the learning-rate schedule, which needs the run's length,
        # would warm up over 10**12 steps: the learning rate would stay near zero.
        raise ConfigError(
            "trainer.max_epochs -1 and trainer.max_steps -1 give the run no end, so the learning-rate schedule "
            "has no length (warmup would never finish): set trainer.max_steps (optimizer steps) or "
            "trainer.max_epochs to a positive number"
        )
    _at_least(config, "trainer.log_every_n_steps", 1, "optimizer steps between logged rows")
    _at_least(config, "trainer.gradient_clip_val", 0, "0 or null = no clipping")
    _at_least(config, "trainer.num_nodes", 1, "machines in the run")
    interval = config_value(config, "trainer.val_check_interval")
    if interval is not None and not isinstance(interval, str) and interval <= 0:
        raise ConfigError(f"trainer.val_check_interval must be > 0, got {interval!r} (a fraction of an epoch or a number of batches)")
    _at_least(config, "cpu_threads", 1, "torch threads on CPU; null = one per core")
    _at_least(config, "data.batch_size", 1, "rows per micro-batch")
    _at_least(config, "data.num_workers", 0, "DataLoader worker processes; 0 = load in the training process")
    _at_least(config, "data.max_length", 2, "tokens per packed row")
    model = _model_init(config)
    path = config_value(model, "model_name_or_path")
    max_length = config_value(config, "data.max_length")
    if path and max_length:
        model_config = model_config_json(str(path))
        limit = max_positions(model_config) if model_config else None
        if limit is not None and max_length > limit:
            raise ConfigError(
                f"data.max_length {max_length} is longer than the model's max_position_embeddings {limit} "
                f"({path}): use --data.max_length {limit} or less"
            )


# owner/name as the hub spells repository ids
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what writes the folder an option names, for the hint of a missing one
_MADE_BY = {"model.tokenizer_path": "a tokenizer made by `medkor extend-vocab --out DIR` is a folder",
            "model.model_name_or_path": "a model written by `medkor export --out DIR` is a folder"}
# --ckpt_path values Lightning resolves itself
_CKPT_WORDS = {"last", "best", "hpc", "registry"}


def _relative_note(value: str) -> str:
    return "" if Path(value).expanduser().is_absolute() else f" (relative to the working directory {Path.cwd()})"


def _found_elsewhere(value: str, config_files: list[str]) -> str:
    """A hint when a relative path exists next to a config file or above it: the usual cause is the cwd."""
    if Path(value).is_absolute():
        return ""
    for config in config_files:
        for folder in Path(config).resolve().parents:
            if (folder / value).exists():
                return f"; it exists under {folder}: run medkor from there, or give an absolute path"
    return ""


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, name), str):
                return True
        except Exception:  # an unusual id: looked up below
            continue
    return False


@functools.lru_cache(maxsize=None)  # asked twice per start: the quick check, then the full parse
def hub_lookup_problem(repo_id: str, timeout: float = 5.0) -> Optional[str]:
    """Why `repo_id` cannot be loaded from the hub (None when it exists or the question cannot be settled here)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set and the local hub cache does not hold it"
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        return None
    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except GatedRepoError:
        return None  # exists; access is the loader's business (huggingface-cli login)
    except RepositoryNotFoundError:
        return "the hub has no model of that id (or it is private: log in with `huggingface-cli login`)"
    except Exception as err:  # no network, proxy, DNS: say so now instead of retrying for a minute
        if type(err).__name__.endswith(("ConnectError", "ConnectionError", "Timeout", "TimeoutException", "ConnectTimeout")):
            return f"the hub cannot be reached to look it up as a hub id ({type(err).__name__})"
        return None
    return None


def check_model_source(key: str, value: Optional[str], config_files: list[str]) -> None:
    """A model or tokenizer location must be an existing folder or a hub id the hub (or its cache) knows."""
    if not value:
        return
    value = str(value)
    path = Path(value).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ConfigError(f"{key} {value!r} is a file; give the folder that holds config.json and the tokenizer "
                          "files, or a hub id such as google/medgemma-4b-it")
    hint = _found_elsewhere(value, config_files)
    if not _HUB_ID.match(value):
        raise ConfigError(f"{key} {value!r}: no such folder{_relative_note(value)}{hint or ''}")
    if hint:  # shaped like a hub id, but a folder of that name exists beside the config
        raise ConfigError(f"{key} {value!r}: no such folder{_relative_note(value)}{hint}")
    if not path.is_absolute() and path.parent.is_dir():  # `runs/x` with a local `runs/`: a path, not a hub id
        raise ConfigError(f"{key} {value!r}: no such folder{_relative_note(value)} ({path.parent} exists, "
                          f"{path.name} not); create it first (e.g. medkor export ... --out {value}) or fix the path")
    if _in_hub_cache(value):
        return
    problem = hub_lookup_problem(value)
    if problem is not None:
        raise ConfigError(
            f"{key} {value!r}: no such folder{_relative_note(value)}, and {problem}; "
            f"check the path ({_MADE_BY.get(key, 'a local model is a folder')}) or the hub id"
        )


def _callback_sources(config: Any) -> list[str]:
    sources = []
    for callback in config_value(config, "trainer.callbacks") or []:
        path = config_value(callback, "class_path") or ""
        if str(path).endswith("KorMedMCQAEval"):
            source = config_value(callback, "init_args.source")
            if source:
                sources.append(str(source))
    return sources


def check_run_paths(config: Any) -> None:
    """Raise `ConfigError` for a path of the run that does not exist, before anything heavy starts."""
    configs = [str(c) for c in (config_value(config, "config") or [])]
    model = _model_init(config)
    check_model_source("model.model_name_or_path", config_value(model, "model_name_or_path"), configs)
    check_model_source("model.tokenizer_path", config_value(model, "tokenizer_path"), configs)
    data = config_value(config, "data")
    data = config_value(data, "init_args", data) if data is not None and config_value(data, "class_path") else data
    data_dir = config_value(data, "data_dir")
    if data_dir and not Path(str(data_dir)).expanduser().is_dir():
        raise ConfigError(f"data.data_dir {str(data_dir)!r}: no such folder{_relative_note(str(data_dir))}"
                          f"{_found_elsewhere(str(data_dir), configs) or '; point it at the folder holding train.jsonl'}")
    for source in _callback_sources(config):
        path = Path(source).expanduser()
        if not path.exists() and not _HUB_ID.match(source):
            raise ConfigError(f"KorMedMCQAEval source {source!r}: no such folder or file{_relative_note(source)}"
                              f"{_found_elsewhere(source, configs) or '; give a local folder or the hub id sean0042/KorMedMCQA'}")
    ckpt = config_value(config, "ckpt_path")
    if ckpt and str(ckpt) not in _CKPT_WORDS and not Path(str(ckpt)).expanduser().exists():
        raise ConfigError(f"--ckpt_path {str(ckpt)!r}: no such file{_relative_note(str(ckpt))}; give a .ckpt written "
                          "by `medkor fit` (fit also takes `last`: the newest last.ckpt under the logger's folder)")


def _first_logger_root(config: Any) -> Optional[Path]:
    """`<save_dir>/<name>` of the config's first logger, when the config spells it out (else None)."""
    loggers = config_value(config, "trainer.logger")
    first = loggers[0] if isinstance(loggers, list) and loggers else loggers
    args = first.get("init_args") if isinstance(first, dict) else None
    if not isinstance(args, dict) or not args.get("save_dir") or args.get("version") is not None:
        return None
    name = args.get("name", "lightning_logs")  # the default of Lightning's CSV and TensorBoard loggers
    return Path(str(args["save_dir"])) / str(name) if name else Path(str(args["save_dir"]))


def check_resume_target(config: Any) -> None:
    """A `fit --ckpt_path` into a run folder that a running process holds is refused before anything loads.

    The run lock itself is taken later, when the run folder is settled; this only answers early.
    """
    ckpt, root = config_value(config, "ckpt_path"), _first_logger_root(config)
    if not ckpt or root is None or str(ckpt) in _CKPT_WORDS - {"last"}:
        return
    from medkor.run.folders import find_last_checkpoint, version_of_checkpoint
    from medkor.run.run_lock import check_free

    checkpoint = find_last_checkpoint(root) if str(ckpt) == "last" else Path(str(ckpt)).expanduser()
    version = version_of_checkpoint(checkpoint, root) if checkpoint is not None else None
    if version is not None:
        check_free(root / f"version_{version}")


def check_quickly(args: list[str], paths: bool = True, command: Optional[str] = None) -> None:
    """`check_run_config` (and `check_run_paths`, and for `fit` `check_fit_config` and `check_resume_target`)
    on `quick_config(args)`; nothing when it cannot be read quickly."""
    config = quick_config(args)
    if config is None:
        return
    check_run_config(config)
    if command == "fit":
        check_fit_config(config)
    if paths:
        check_run_paths(config)
        if command == "fit":
            check_resume_target(config)


def quick_config(args: list[str]) -> Optional[dict[str, Any]]:
    """The run config of `medkor fit ARGS` from its YAML files and plain `--a.b value` overrides, without jsonargparse.

    Enough for the checks above to answer in a fraction of a second, before Lightning is
    imported; the full parse later checks again. None when the arguments hold anything this
    reading does not follow exactly (then only the full parse checks).
    """
    import yaml

    config: dict[str, Any] = {}
    files: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg in ("--help", "-h", "--print_config"):
            return None
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                return None
            value, i = args[i + 1], i + 1
        i += 1
        if key == "config":
            if not Path(value).is_file():
                raise ConfigError(f"--config {value!r}: no such file{_relative_note(value)}")
            try:
                loaded = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                return None  # the full parse names the file and the problem
            if not isinstance(loaded, dict):
                return None
            _merge(config, loaded)
            files.append(value)
            continue
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key) or key.split(".")[0] not in (
                "model", "data", "trainer", "ckpt_path", "seed_everything", "cpu_threads"):
            return None
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return None
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                return None
        node[last] = parsed
    config["config"] = files
    return config


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
