"""The demo config the exact-resume tests train: a few steps per epoch, step checkpoints, LoRA dropout.

LoRA dropout makes the random state matter, so a resume that does not restore it
on every rank cannot match the uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def resume_config(repo_root: Path, save_dir: Path, epochs: int, steps_per_epoch: int,
                  extra_callbacks: list[dict[str, Any]]) -> dict[str, Any]:
    config = yaml.safe_load((repo_root / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    trainer = config["trainer"]
    for logger in trainer["logger"]:
        logger["init_args"]["save_dir"] = str(save_dir)
    trainer.update(max_epochs=epochs, limit_train_batches=steps_per_epoch, limit_val_batches=2, log_every_n_steps=1,
                   deterministic=True, enable_progress_bar=False)
    trainer["callbacks"] = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 2, "save_top_k": -1, "save_last": True, "filename": "step{step}",
                       "auto_insert_metric_name": False}},
        {"class_path": "medkor.callbacks.KorMedMCQAEval",
         "init_args": {"source": "medkor/assets/demo/kormedmcqa", "max_samples": 3, "batch_size": 12}},
        *extra_callbacks,
    ]
    config["model"].update(trainable="embeddings+lora", lora={"r": 4, "alpha": 8, "dropout": 0.2,
                                                               "target_modules": ["q_proj", "v_proj"]})
    return config


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path
