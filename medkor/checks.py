"""Checks of a run config that cost nothing, made before any model or data is loaded.

Each failure is a `ConfigError` naming the option, the value and what to use; the
`medkor` command prints it as one line and exits 2. Without these checks a bad value
surfaces minutes later (after the model has loaded, or as an out-of-memory error).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


class ConfigError(ValueError):
    """A config value that cannot work; the message names the option."""


def _get(config: Any, key: str, default: Any = None) -> Any:
    node = config
    for part in key.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def _model_init(config: Any) -> Any:
    model = _get(config, "model")
    return _get(model, "init_args", model) if model is not None and _get(model, "class_path") else model


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
    value = _get(config, key)
    if value is None:
        if allow_none:
            return
        raise ConfigError(f"{key} must be set ({hint})")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ConfigError(f"{key} must be >= {low:g}, got {value!r} ({hint})")


def check_run_config(config: Any) -> None:
    """Raise `ConfigError` for the first value of a `fit`/`validate`/`test` config that cannot work."""
    _at_least(config, "trainer.accumulate_grad_batches", 1, "micro-batches per optimizer step; 1 = no accumulation")
    _at_least(config, "trainer.max_epochs", -1, "-1 = no limit")
    _at_least(config, "trainer.max_steps", -1, "-1 = no limit")
    _at_least(config, "trainer.log_every_n_steps", 1, "optimizer steps between logged rows")
    _at_least(config, "trainer.gradient_clip_val", 0, "0 or null = no clipping")
    _at_least(config, "trainer.num_nodes", 1, "machines in the run")
    interval = _get(config, "trainer.val_check_interval")
    if interval is not None and not isinstance(interval, str) and interval <= 0:
        raise ConfigError(f"trainer.val_check_interval must be > 0, got {interval!r} (a fraction of an epoch or a number of batches)")
    _at_least(config, "data.batch_size", 1, "rows per micro-batch")
    _at_least(config, "data.num_workers", 0, "DataLoader worker processes; 0 = load in the training process")
    _at_least(config, "data.max_length", 2, "tokens per packed row")
    model = _model_init(config)
    path = _get(model, "model_name_or_path")
    max_length = _get(config, "data.max_length")
    if path and max_length:
        model_config = model_config_json(str(path))
        limit = max_positions(model_config) if model_config else None
        if limit is not None and max_length > limit:
            raise ConfigError(
                f"data.max_length {max_length} is longer than the model's max_position_embeddings {limit} "
                f"({path}): use --data.max_length {limit} or less"
            )
