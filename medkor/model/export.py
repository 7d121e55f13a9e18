"""Write a Hugging Face folder that `from_pretrained` loads as the original class."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Files of a multimodal checkpoint's processor, copied so AutoProcessor keeps working.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def merged_model(model: nn.Module) -> PreTrainedModel:
    """The plain transformers model; LoRA adapters merged into the base weights (in place)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def export_folder(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Union[str, Path],
    *,
    dtype: Optional[torch.dtype] = None,
    processor_source: Optional[Union[str, Path]] = None,
) -> Path:
    """Save `model` (merged) and `tokenizer` to `out_dir` as safetensors + config.

    Args:
        model: a transformers model, possibly peft-wrapped; LoRA is merged in place.
        tokenizer: the (extended) tokenizer the model was trained with.
        out_dir: the folder to write; created if needed.
        dtype: cast the weights before saving (e.g. bfloat16 for a 4B model).
        processor_source: a local checkpoint folder whose image-processor files are copied.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_model = merged_model(model)
    if dtype is not None:
        hf_model = hf_model.to(dtype)
    # Training switched the KV cache off; generation from the export wants it back.
    hf_model.config.get_text_config().use_cache = True
    hf_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if processor_source is not None and Path(processor_source).is_dir():
        for name in PROCESSOR_FILES:
            source = Path(processor_source) / name
            if source.is_file():
                shutil.copyfile(source, out / name)
    return out
