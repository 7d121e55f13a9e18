"""Load a Gemma 3 checkpoint (text-only or multimodal) and its tokenizer, verified.

`from_pretrained` quietly initialises any weight the checkpoint lacks; loading the
multimodal MedGemma into a text-only class would therefore train a random model.
Every load here asks for the loading report and refuses to go on when a weight
came back missing or with the wrong shape.
"""

from __future__ import annotations

from typing import Any, Union

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from medkor.vocab.files import TokenizerFileError
from medkor.vocab.files import load_tokenizer as load_tokenizer_files

DTYPES: dict[str, Union[torch.dtype, str]] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}
# Parts of the multimodal model that text training never touches.
VISION_MODULES = ("vision_tower", "multi_modal_projector")


class WeightLoadingError(RuntimeError):
    """A checkpoint did not provide every weight of the model class it was loaded into."""


def resolve_dtype(name: str) -> Union[torch.dtype, str]:
    """`"bfloat16"` -> `torch.bfloat16`; `"auto"` keeps the checkpoint's own dtype."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"torch_dtype {name!r} is not one of {sorted(DTYPES)}") from None


def model_class_for(config: Any) -> type:
    """The class that holds every weight of a checkpoint with this config.

    `gemma3` checkpoints (MedGemma-4B) are vision-language models; `gemma3_text`
    ones (MedGemma-27B text, tiny test models) are plain causal LMs.
    """
    model_type = getattr(config, "model_type", None)
    if model_type == "gemma3":
        return Gemma3ForConditionalGeneration
    if model_type == "gemma3_text":
        return Gemma3ForCausalLM
    return AutoModelForCausalLM


def check_loading_info(info: dict[str, Any], source: str) -> None:
    """Raise when weights were missing (so newly initialised) or mismatched in shape."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or ()))
    errors = list(info.get("error_msgs") or ())
    if not (missing or mismatched or errors):
        return
    lines = [f"loading {source} left weights random instead of loading them:"]
    if missing:
        lines.append(f"  missing from the checkpoint (newly initialised), {len(missing)}: {_preview(missing)}")
    if mismatched:
        lines.append(f"  shape mismatch (re-initialised), {len(mismatched)}: {_preview(mismatched)}")
    if errors:
        lines.append(f"  errors: {_preview(errors)}")
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        lines.append(f"  and the checkpoint has {len(unexpected)} weights the class does not use: {_preview(unexpected)}")
    lines.append(
        "The checkpoint does not match the model class (e.g. a multimodal Gemma 3 loaded as text-only) "
        "or is incomplete; point model_name_or_path at a complete Gemma 3 checkpoint."
    )
    raise WeightLoadingError("\n".join(lines))


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def load_model(
    model_name_or_path: str,
    *,
    torch_dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load the checkpoint into the class that owns all its weights, and verify the load."""
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    cls = model_class_for(config)
    model, info = cls.from_pretrained(
        model_name_or_path,
        config=config,
        dtype=resolve_dtype(torch_dtype),
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        output_loading_info=True,
    )
    check_loading_info(info, model_name_or_path)
    # Training never uses a KV cache, and a cache switches off the packed-document mask.
    text_config(model).use_cache = False
    return model


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `path` (a folder or hub id); a damaged file raises `TokenizerFileError` naming it."""
    try:
        return load_tokenizer_files(path, trust_remote_code=trust_remote_code)
    except TokenizerFileError:
        raise
    except (OSError, ValueError) as err:
        raise OSError(
            f"cannot load a tokenizer from {path!r}: {err}. Give a folder with tokenizer.json "
            "(the checkpoint's own, or one written by `medkor extend-vocab`)."
        ) from err


def text_config(model: PreTrainedModel) -> Any:
    """The text (decoder) part of a config, for multimodal and text-only models alike."""
    return model.config.get_text_config()


def is_multimodal(model: PreTrainedModel) -> bool:
    """True for vision-language checkpoints such as MedGemma-4B."""
    inner = getattr(model, "model", None)
    return any(hasattr(inner, name) for name in VISION_MODULES)
